"""Mixing augmentations: Cutout, Mixup and CutMix, applied to every training batch on the device.

All three change supervised training (CutMix and Mixup train on soft labels), so they
apply to the supervised protocol only. Mixup and CutMix use torchvision.transforms.v2,
which draws one mixing coefficient λ (and, for CutMix, one box) per batch and pairs each
image with its neighbour in the already shuffled batch; the papers' reference code does
the same (one λ per batch, a shuffled partner).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from uebench.api import Defense


@dataclass
class Cutout(Defense):
    """Cutout (DeVries & Taylor, 2017): zero one square patch of every training image.

    The patch centre is uniform over the image, so the square is clipped where it
    crosses the border (as in the paper's code). The side is ``length`` on 32-px images
    and scales with the image (8 px on 16 px, 4 px on 8×8 digits). Each image gets its
    own patch; the mask is built for the whole batch at once.

    Defaults: length 16 (APBench's setting for CIFAR-10).
    Deviations: none.
    """

    name = "cutout"
    paper = "DeVries & Taylor, Improved Regularization of CNNs with Cutout, arXiv"
    year = 2017
    protocols: ClassVar[tuple[str, ...]] = ("supervised",)
    length: int = 16

    def __post_init__(self):
        if self.length < 1:
            raise ValueError(f"length must be >= 1, got {self.length}")

    def patch_size(self, height: int, width: int) -> tuple[int, int]:
        """The patch (rows, cols) on an image of this size: ``length`` per 32 pixels."""
        return max(1, round(self.length * height / 32)), max(1, round(self.length * width / 32))

    def augment(self, x, y):
        n, _, h, w = x.shape
        side_h, side_w = self.patch_size(h, w)
        # centres from the global generator (seeded by the trainer), drawn on the CPU
        centre_y = torch.randint(0, h, (n, 1)).to(x.device)
        centre_x = torch.randint(0, w, (n, 1)).to(x.device)
        rows = torch.arange(h, device=x.device)[None] - (centre_y - side_h // 2)    # (n, h)
        cols = torch.arange(w, device=x.device)[None] - (centre_x - side_w // 2)    # (n, w)
        in_rows = (rows >= 0) & (rows < side_h)
        in_cols = (cols >= 0) & (cols < side_w)
        keep = ~(in_rows[:, :, None] & in_cols[:, None, :])                          # (n, h, w)
        return x * keep[:, None].to(x.dtype), y


@dataclass
class _SoftLabelMixing(Defense):
    """Shared by Mixup and CutMix: one-hot labels, then a torchvision v2 batch transform."""

    protocols: ClassVar[tuple[str, ...]] = ("supervised",)

    def __post_init__(self):
        self._num_classes: int | None = None
        self._mix = self.make_transform()

    def make_transform(self) -> v2.Transform:
        raise NotImplementedError

    def fit(self, x, y, reference, ctx):
        self._num_classes = ctx.num_classes   # augment() needs it to one-hot the labels
        return super().fit(x, y, reference, ctx)

    def augment(self, x, y):
        if y.ndim == 1:
            if self._num_classes is None:
                raise RuntimeError(f"{type(self).__name__}.augment needs (N, K) soft labels or a "
                                   "preceding fit() that tells it the number of classes")
            y = F.one_hot(y, self._num_classes).float()
        return self._mix(x, y)


@dataclass
class Mixup(_SoftLabelMixing):
    """Mixup (Zhang et al., ICLR 2018): train on convex combinations of image pairs and labels.

    λ ~ Beta(α, α); x̃ = λ·x_i + (1 − λ)·x_j, ỹ = λ·y_i + (1 − λ)·y_j, with j the
    neighbour of i in the shuffled batch; soft-label cross-entropy.

    Defaults: α = 1 (APBench).
    Deviations: none (one λ per batch, as in the paper's code).
    """

    name = "mixup"
    paper = "Zhang et al., mixup: Beyond Empirical Risk Minimization, ICLR"
    year = 2018
    alpha: float = 1.0

    def make_transform(self):
        return v2.MixUp(alpha=self.alpha)


@dataclass
class CutMix(_SoftLabelMixing):
    """CutMix (Yun et al., ICCV 2019): paste a box from the partner image, mix labels by area.

    λ ~ Beta(β, β) sets the box area 1 − λ; the box centre is uniform and the box is
    clipped at the border, and the label weight is corrected to the pasted area.

    Defaults: β = 1 (APBench).
    Deviations: none (one box per batch, as in the paper's code).
    """

    name = "cutmix"
    paper = "Yun et al., CutMix: Regularization Strategy to Train Strong Classifiers, ICCV"
    year = 2019
    beta: float = 1.0

    def make_transform(self):
        return v2.CutMix(alpha=self.beta)
