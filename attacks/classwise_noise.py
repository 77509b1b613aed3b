"""One fixed, smooth random pattern per class: the classic shortcut."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from uebench.api import Attack, ThreatModel


@dataclass
class ClasswiseNoise(Attack):
    """Class-wise noise as in the synthetic baselines of Huang et al. (ICLR 2021), made smooth.

    Each class gets one random pattern: a ``grid × grid`` array of uniform values in
    [-1, 1] per channel, upsampled bilinearly to the image size and scaled to ±ε. The
    same pattern is added to every image of that class, then the image is clipped.

    Why smooth: a per-pixel ±ε pattern is destroyed by the random crops every trainer
    uses (a 4-px shift decorrelates it from itself), so the network never latches on;
    measured on 8,000 CIFAR-10 images with a small CNN, crop and flip, a per-pixel class
    pattern left accuracy at the clean level (67 % vs 66 %), while a 4×4 grid upsampled
    to 32×32 took it to 48 %. A low-frequency pattern survives shifts, so it is the
    shortcut a benchmark should use. ``grid`` equal to the image size gives the
    per-pixel variant.

    Released as uint8 images by rounding to the nearest level (``release = "round"``): the
    baseline is ours, not an official pipeline's, and rounding keeps the pattern signed and
    within ±ε (EM's dataset class, which the paper's class-wise baseline went through, zeroes
    the negative half; that export is EM's, ``attacks/em.py``).
    """

    name = "classwise-noise"
    release = "round"
    paper = "class-wise noise baseline, Huang et al., Unlearnable Examples, ICLR"
    year = 2021
    eps: float = 8 / 255
    grid: int = 4

    def __post_init__(self):
        if self.grid < 1:
            raise ValueError(f"grid must be >= 1, got {self.grid}")

    def threat_model(self) -> ThreatModel:
        return ThreatModel("linf", self.eps)

    def generate(self, x, y, ctx):
        c, h, w = x.shape[1:]
        coarse = torch.rand(ctx.num_classes, c, self.grid, self.grid, generator=ctx.generator()) * 2 - 1
        patterns = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)
        patterns = patterns / patterns.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
        return (x + self.eps * patterns[y]).clamp(0, 1)
