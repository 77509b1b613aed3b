"""UEraser: adversarial augmentations that erase unlearnable-example shortcuts."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from uebench.api import Defense
from uebench.toolkit.images import jpeg, to_uint8


class ScaledTrivialAugmentWide(v2.TrivialAugmentWide):
    """TrivialAugment Wide with its translation range scaled to the image.

    The wide space translates by up to 32 px, a range made for 32-px CIFAR images; here
    it is up to the image's own width and height, identical on 32 px and proportionate on
    8- or 16-px images (where 32 px would move every image out of the frame).
    """

    _AUGMENTATION_SPACE = {
        **v2.TrivialAugmentWide._AUGMENTATION_SPACE,
        "TranslateX": (lambda num_bins, height, width: torch.linspace(0.0, float(width), num_bins), True),
        "TranslateY": (lambda num_bins, height, width: torch.linspace(0.0, float(height), num_bins), True),
    }


@dataclass
class UEraser(Defense):
    """UEraser (Qin et al., 2023, "Learning the Unlearnable: Adversarial Augmentations
    Suppress Unlearnable Example Attacks").

    Every training image is augmented by a strong chain: plasma brightness, plasma
    contrast (kornia), channel shuffle, then TrivialAugment (torchvision v2 on uint8).
    For the first ``repeat_fraction`` of the epochs each image is augmented ``copies``
    times and the loss is the per-sample *maximum* over the copies, averaged over the
    batch (the adversarial augmentation); afterwards one copy (K = 1) is used.

    Defaults (the paper and APBench): K = 5 copies; plasma brightness roughness 0.3–0.7,
    intensity 0.5–1.0, p 0.5; plasma contrast roughness 0.3–0.7, p 0.5; channel shuffle
    p 0.5; repeat for 50 of 300 epochs, stored as the fraction 1/6 so that any epoch budget
    works (``ueraser-max`` repeats for all epochs, ``ueraser-lite`` for none). The JPEG
    variant (``jpeg_quality=10``) ends the chain with a straight-through JPEG round trip.

    Deviations:
    - TrivialAugment is torchvision's ``TrivialAugmentWide``, which draws one operation
      per call; it is called on groups of ``trivial_group`` images, so different images
      and copies get different operations (the official kornia TrivialAugment draws one
      operation for the whole K·N batch, so all K copies of a batch share it).
    - TrivialAugment Wide's translation range (up to 32 px) is scaled to the image size.
    - The repeat epochs are a fraction of the training budget instead of a count.
    """

    name = "ueraser"
    paper = "Qin et al., Learning the Unlearnable: Adversarial Augmentations Suppress Unlearnable Example Attacks"
    year = 2023
    protocols: ClassVar[tuple[str, ...]] = ("supervised",)
    presets: ClassVar[dict] = {"smoke": {"copies": 2}}
    copies: int = 5
    repeat_fraction: float = 50 / 300
    plasma_roughness: tuple[float, float] = (0.3, 0.7)
    plasma_intensity: tuple[float, float] = (0.5, 1.0)
    plasma_brightness_p: float = 0.5
    plasma_contrast_p: float = 0.5
    channel_shuffle_p: float = 0.5
    trivial_group: int = 16
    jpeg_quality: int | None = None

    def __post_init__(self):
        if self.copies < 1 or self.trivial_group < 1:
            raise ValueError(f"copies and trivial_group must be >= 1, got {self.copies}, {self.trivial_group}")
        if not 0 <= self.repeat_fraction <= 1:
            raise ValueError(f"repeat_fraction must lie in [0, 1], got {self.repeat_fraction}")
        self.plasma_roughness = tuple(self.plasma_roughness)
        self.plasma_intensity = tuple(self.plasma_intensity)
        self._photometric = K.AugmentationSequential(
            K.RandomPlasmaBrightness(roughness=self.plasma_roughness, intensity=self.plasma_intensity,
                                     p=self.plasma_brightness_p, keepdim=True),
            K.RandomPlasmaContrast(roughness=self.plasma_roughness, p=self.plasma_contrast_p, keepdim=True),
            K.RandomChannelShuffle(p=self.channel_shuffle_p, keepdim=True),
        )
        self._trivial = ScaledTrivialAugmentWide()
        # Until fit() knows the epoch budget, every epoch with a non-zero fraction repeats.
        self.repeat_epochs: float = math.inf if self.repeat_fraction > 0 else 0

    def repeat_epochs_for(self, total_epochs: int) -> int:
        """The number of leading epochs with K copies, for a training budget (rounded up)."""
        return math.ceil(self.repeat_fraction * total_epochs - 1e-9)

    def fit(self, x, y, reference, ctx):
        self.repeat_epochs = self.repeat_epochs_for(ctx.train.epochs)
        ctx.notes["ueraser_repeat_epochs"] = self.repeat_epochs
        return super().fit(x, y, reference, ctx)

    def copies_at(self, epoch: int) -> int:
        """K for this epoch: ``copies`` during the repeat epochs, then 1."""
        return self.copies if epoch < self.repeat_epochs else 1

    def erase(self, x: torch.Tensor) -> torch.Tensor:
        """One draw of the augmentation chain on a batch in [0, 1]."""
        with torch.autocast(x.device.type, enabled=False):   # augment in float32 under AMP
            x = self._photometric(x.float()).clamp(0, 1)
            groups = to_uint8(x).split(self.trivial_group)
            x = torch.cat([self._trivial(group) for group in groups]).float() / 255
            if self.jpeg_quality is not None:   # straight-through: JPEG forward, identity backward
                x = x + (jpeg(x, self.jpeg_quality) - x).detach()
        return x

    def loss(self, model, x, y, epoch):
        k = self.copies_at(epoch)
        views = self.erase(x.repeat(k, 1, 1, 1))
        targets = y.repeat(k) if y.ndim == 1 else y.repeat(k, 1)
        per_view = F.cross_entropy(model(views), targets, reduction="none")    # copy c of i: row c·N + i
        return per_view.view(k, -1).amax(dim=0).mean()


@dataclass
class UEraserLite(UEraser):
    """UEraser-Lite: the augmentation chain with one copy (K = 1) in every epoch.

    Deviations: as :class:`UEraser`.
    """

    name = "ueraser-lite"
    repeat_fraction: float = 0.0


@dataclass
class UEraserMax(UEraser):
    """UEraser-Max: the max-over-K loss in every epoch (APBench: 300 of 300 epochs).

    Deviations: as :class:`UEraser`.
    """

    name = "ueraser-max"
    repeat_fraction: float = 1.0
