"""Mixing augmentations: Cutout, Mixup and CutMix, applied to every training batch on the device.

All three change supervised training (CutMix and Mixup train on soft labels), so they
apply to the supervised protocol only. Mixup and CutMix use kornia's batch augmentations
``RandomMixUpV2`` and ``RandomCutMixV2`` with their defaults, exactly as APBench's
``train.py`` does: every image gets its own λ (and, for CutMix, its own box, always inside
the image) and a random partner from the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
import kornia.augmentation as K

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
    """Shared by Mixup and CutMix: a kornia mixing augmentation, its labels made soft.

    kornia returns, per image, (label, partner's label, λ); the loss APBench trains with,
    (1 − λ)·CE(label) + λ·CE(partner's label), equals the cross-entropy with the soft label
    (1 − λ)·onehot(label) + λ·onehot(partner's label), which is what the trainer uses.
    """

    protocols: ClassVar[tuple[str, ...]] = ("supervised",)

    def __post_init__(self):
        self._num_classes: int | None = None
        self._mix = self.make_transform()

    def make_transform(self) -> K.AugmentationBase2D:
        raise NotImplementedError

    def fit(self, x, y, reference, ctx):
        self._num_classes = ctx.num_classes   # augment() needs it to one-hot the labels
        return super().fit(x, y, reference, ctx)

    def augment(self, x, y):
        if y.ndim != 1:
            raise ValueError(f"{type(self).__name__}.augment mixes integer labels, got shape {tuple(y.shape)}")
        if self._num_classes is None:
            raise RuntimeError(f"{type(self).__name__}.augment needs a preceding fit() that tells it "
                               "the number of classes")
        mixed, labels = self._mix(x, y)
        labels = labels.reshape(len(x), 3)                   # CutMix adds a leading num_mix axis
        own, partner, lam = labels[:, 0].long(), labels[:, 1].long(), labels[:, 2:].to(x.dtype)
        soft = (1 - lam) * F.one_hot(own, self._num_classes) + lam * F.one_hot(partner, self._num_classes)
        return mixed, soft


@dataclass
class Mixup(_SoftLabelMixing):
    """Mixup (Zhang et al., ICLR 2018): train on convex combinations of image pairs and labels.

    Per image i: a random partner j from the batch and λ_i ~ U(0, 1) (Beta(1, 1));
    x̃_i = (1 − λ_i)·x_i + λ_i·x_j, ỹ_i = (1 − λ_i)·y_i + λ_i·y_j; soft-label
    cross-entropy. kornia's ``RandomMixUpV2`` with its defaults, as in APBench.

    Defaults (APBench): λ uniform on ``lambda_range`` = (0, 1).
    Deviations: none.
    """

    name = "mixup"
    paper = "Zhang et al., mixup: Beyond Empirical Risk Minimization, ICLR"
    year = 2018
    lambda_range: tuple[float, float] = (0.0, 1.0)

    def make_transform(self):
        low, high = self.lambda_range
        if not 0 <= low <= high <= 1:
            raise ValueError(f"lambda_range must satisfy 0 <= low <= high <= 1, got {self.lambda_range}")
        return K.RandomMixUpV2(lambda_val=(float(low), float(high)), data_keys=["input", "class"])


@dataclass
class CutMix(_SoftLabelMixing):
    """CutMix (Yun et al., ICCV 2019): paste a box from a partner image, mix the labels.

    Per image: a random partner from the batch and a box whose area share is drawn from
    Beta(β, β), placed so that it lies wholly inside the image (mean pasted share about
    0.48 on 32×32 images); kornia's ``RandomCutMixV2`` with its defaults, as in APBench.

    Defaults (APBench): β = 1.
    Deviations: none. The label weight is kornia's default λ (its ``use_correct_lambda=False``,
    the behaviour APBench trained with), not the rounded box's exact area.
    """

    name = "cutmix"
    paper = "Yun et al., CutMix: Regularization Strategy to Train Strong Classifiers, ICCV"
    year = 2019
    beta: float = 1.0

    def make_transform(self):
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        import warnings
        with warnings.catch_warnings():   # kornia announces a future change of this default
            warnings.simplefilter("ignore", DeprecationWarning)
            return K.RandomCutMixV2(beta=float(self.beta), data_keys=["input", "class"])
