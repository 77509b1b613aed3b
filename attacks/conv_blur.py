"""Convolution-based unlearnable data (CUDA): a random blur filter per class."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from uebench.api import Attack, ThreatModel


@dataclass
class ConvBlur(Attack):
    """CUDA, convolution-based unlearnable datasets: Sadasivan, Soltanolkotabi and Feizi,
    "CUDA: Convolution-based Unlearnable Datasets", CVPR 2023 (official code:
    github.com/vinusankars/Convolution-based-Unlearnability, ``final_filter_unlearnable.py``).

    Each class gets one random 3×3 filter: taps drawn uniformly from [0, ``blur_parameter``],
    one tap at a random position set to ``center_parameter`` (1), the same filter for every
    channel. Every image of the class is convolved with it (zero padding), divided by its own
    maximum, and stored as uint8 (truncated, as the official ``astype(np.uint8)``). The victim
    learns the class-wise blur, which is easy, instead of the images. Registered as
    ``conv-blur``: "CUDA" means the GPU here.

    The attack is not norm-bounded (a blur moves pixels by far more than 8/255). Its threat
    model is ``conv`` with budget ``blur_parameter``: the budget guard fits a channel-shared
    3×3 filter to every poisoned image and requires it to explain the image to within uint8
    rounding, with every tap but the largest at most ``blur_parameter`` times the largest
    (the record keeps the largest ratio and fit residual it measured).

    Defaults (paper and official code, CIFAR-10): blur parameter 0.3, kernel 3, centre tap
    1.0, every image poisoned (``mix`` 1.0). The filters and the per-image mix draws come from
    numpy's generator seeded with the cell's seed, in the official order (per class: the 9×3
    taps, then the centre's row and column; then one draw per image).

    Deviations: none in what is computed. The official code draws from numpy's global
    generator; ours from its own ``RandomState`` (the same stream). 1-channel images get the
    same filter on their one channel (the official code is for RGB only).
    """

    name = "conv-blur"
    paper = "Sadasivan, Soltanolkotabi, Feizi, CUDA: Convolution-based Unlearnable Datasets, CVPR"
    year = 2023
    presets = {"smoke": {}, "demo": {}, "cpu": {}, "gpu": {}}   # no cost to scale down

    blur_parameter: float = 0.3
    center_parameter: float = 1.0
    mix: float = 1.0                 # the fraction of images poisoned

    def __post_init__(self):
        if not 0 <= self.blur_parameter <= self.center_parameter:
            raise ValueError(f"blur_parameter must be in [0, center_parameter], got {self.blur_parameter}")
        if not 0 < self.mix <= 1:
            raise ValueError(f"mix must be in (0, 1], got {self.mix}")

    def threat_model(self) -> ThreatModel:
        return ThreatModel("conv", self.blur_parameter / self.center_parameter)

    def filters(self, num_classes: int, rng: np.random.RandomState) -> torch.Tensor:
        """One 3×3 filter per class, (K, 3, 3), in the official draw order."""
        kernels = []
        for _ in range(num_classes):
            taps = rng.uniform(low=0, high=self.blur_parameter, size=(3, 1, 3, 3))   # one per channel; channel 0 is kept
            taps[0, 0, rng.randint(3), rng.randint(3)] = self.center_parameter
            kernels.append(torch.from_numpy(taps[0, 0]).float())
        return torch.stack(kernels)

    def generate(self, x, y, ctx):
        rng = np.random.RandomState(ctx.seed)
        kernels = self.filters(ctx.num_classes, rng)
        poisoned_mask = torch.from_numpy(rng.random_sample(len(x)) < self.mix)
        out = x.clone()
        channels = x.shape[1]
        for k in torch.unique(y).tolist():                # a loop over classes, not images
            members = ((y == k) & poisoned_mask).nonzero().flatten()
            if len(members) == 0:
                continue
            weight = kernels[k].expand(channels, 1, 3, 3).to(ctx.device)
            blurred = F.conv2d(x[members].to(ctx.device), weight, padding=1, groups=channels)
            peak = blurred.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
            out[members] = ((blurred / peak * 255).clamp(0, 255).floor() / 255).cpu()   # uint8 truncation
        ctx.notes["conv_blur_poisoned"] = int(poisoned_mask.sum())
        return out
