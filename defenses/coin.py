"""COIN: corrupting convolution-based unlearnable examples by random bilinear resampling."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from uebench.api import Defense

SEVERITY_ALPHA = (0.8, 1.2, 1.6, 2.0, 2.4, 2.8, 3.2)   # the official severities 1..7


def wrapped(coordinate: torch.Tensor, size: int) -> torch.Tensor:
    """scipy.ndimage's ``mode='wrap'``: a coordinate outside [0, size − 1] repeats with period
    size − 1 (the last sample and the first coincide), so interpolation never crosses from the
    last sample to the first; one inside is kept."""
    inside = (coordinate >= 0) & (coordinate <= size - 1)
    return torch.where(inside, coordinate, torch.remainder(coordinate, max(size - 1, 1)))


def coin_warp(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Sample each image at (row + dy, column + dx) by bilinear interpolation, the displacement
    shared by its channels, with scipy's ``wrap`` boundary; then uint8 truncation, as the official
    ``np.uint8(map_coordinates(...) * 255)``. x: (N, C, H, W) in [0, 1]; dy, dx: (N, H, W)."""
    n, c, h, w = x.shape
    rows = wrapped(torch.arange(h, device=x.device).view(1, h, 1) + dy, h)
    cols = wrapped(torch.arange(w, device=x.device).view(1, 1, w) + dx, w)
    r0, c0 = rows.floor().long(), cols.floor().long()
    r1, c1 = (r0 + 1).clamp(max=h - 1), (c0 + 1).clamp(max=w - 1)   # at a weight of 0 where clamped
    tr, tc = (rows - r0)[:, None], (cols - c0)[:, None]

    def at(r: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        index = (r * w + col).view(n, 1, h * w).expand(n, c, h * w)
        return x.reshape(n, c, h * w).gather(2, index).view(n, c, h, w)

    top = at(r0, c0) * (1 - tc) + at(r0, c1) * tc
    bottom = at(r1, c0) * (1 - tc) + at(r1, c1) * tc
    out = top * (1 - tr) + bottom * tr
    return (out.clamp(0, 1) * 255).floor() / 255


@dataclass
class COIN(Defense):
    """COIN: Li, Wang, Yu, Hu, Zhou, Zhang and Zhang, "Detecting and Corrupting Convolution-based
    Unlearnable Examples", AAAI 2025 (official code: github.com/wxldragon/COIN, ``train.py``).

    A training augmentation against class-wise convolutional noise: after the random crop and
    flip, every pixel of every training image is resampled at a random displacement, drawn
    uniformly from [−α, α] in each direction independently per pixel (the same for the image's
    channels), by bilinear interpolation; the image is then stored as uint8 again. The random
    "matrix multiplication" breaks the class-wise filter the victim would otherwise learn.

    Defaults (official code): severity 4, α = 2.0 pixels on 32-pixel images; scipy's
    ``map_coordinates`` with ``order=1, mode='wrap'`` (matched exactly, boundary included);
    truncation to uint8.

    Deviations: α scales with the image (α · H / 32: 1 px on 16-px images, 0.5 on 8×8 digits),
    where the official code, written for 32-px CIFAR, uses 2 px whatever the size; the same at
    32 px. The displacements come from torch's generator (seeded by the trainer), on the device,
    per batch; the official code draws them from numpy's global generator in its data loader's
    workers. The sample coordinates are built in float32 on the device, where the official code
    adds the float32 displacement to the integer grid in float64: a point a hair past the last
    row or column (6 + 1.0000001 on an 8-px image) is wrapped to the first one officially and
    kept on the last one here. Measured against the official code on 500 CIFAR-10 images: one
    pixel in 512,000 at severity 7, none at severity 4; and float32 interpolation puts 0.05 % of
    values one uint8 level from the official float64 result (``tests/defenses/test_coin.py``).
    The paper evaluates COIN on convolution-based UEs; here it runs on every row.
    """

    name = "coin"
    paper = ("Li, Wang, Yu, Hu, Zhou, Zhang, Zhang, Detecting and Corrupting Convolution-based "
             "Unlearnable Examples, AAAI")
    year = 2025
    protocols: ClassVar[tuple[str, ...]] = ("supervised",)

    alpha: float = SEVERITY_ALPHA[3]

    def __post_init__(self):
        if not self.alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")

    def augment(self, x, y):
        n, _, h, w = x.shape
        alpha = self.alpha * h / 32                         # α pixels on 32-px images
        # drawn on the CPU from the global generator (seeded by the trainer), as the other augmentations
        dy = (torch.rand(n, h, w) * 2 - 1).mul_(alpha).to(x.device)
        dx = (torch.rand(n, h, w) * 2 - 1).mul_(alpha).to(x.device)
        return coin_warp(x, dy, dx), y
