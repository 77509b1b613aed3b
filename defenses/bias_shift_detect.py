"""The bias-shifting noise test: a shortcut survives a constant shift of the pixels, images do not."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from uebench.api import Detector
from uebench.toolkit.heldout import heldout_confidence, udp_recipe
from uebench.train import train_supervised


@dataclass
class BiasShiftDetect(Detector):
    """Zhu et al., "Detection and Defense of Unlearnable Examples" (AAAI 2024), Algorithm 2.

    Official (hala64/udp, ``poison_detection.py``, ``--detection-method bias-0.5`` / ``bias+0.5``): the
    40,000 training images of the split are shifted by a constant ε_b = ∓0.5 on every pixel (not
    clamped, not augmented), a CIFAR ResNet-18 trains on them (SGD momentum 0.9, weight decay 5e-4,
    batch 128, 100 epochs, lr ÷10 at 75 and 90), and the set is called protected when its accuracy on
    the unshifted held-out 10,000 exceeds B = 0.7: on clean images the shift is a change of
    distribution the network does not cross, a shortcut it learned still works. The learning rate is
    0.01: the code means 0.1 but assigns it after the optimiser is built (``lr`` sets either).

    Here, as for :class:`~uebench.defenses.simple_net_detect.SimpleNetDetect`, ``folds``-fold
    cross-fitting gives every image of the cell's mix the probability of its label under the network
    trained without it on shifted images, the image unshifted; flagged above ``bound``. The ``cpu``
    preset trains the table's victim (``arch`` None) for 15 epochs with 2 folds.
    """

    name: ClassVar[str] = "bias-shift-detect"
    paper: ClassVar[str] = "Zhu et al., Detection and Defense of Unlearnable Examples (bias-shifting noise test)"
    year: ClassVar[int] = 2024
    presets: ClassVar[dict] = {"cpu": {"epochs": 15, "folds": 2, "arch": None},
                               "smoke": {"epochs": 1, "folds": 2, "arch": None}}

    shift: float = -0.5        # ε_b (the paper reports -0.5 and +0.5)
    arch: str | None = "resnet18"   # None: the table's victim
    epochs: int = 100
    lr: float = 0.01           # what the official code trains with (see above)
    batch_size: int = 128
    folds: int = 5
    bound: float = 0.7         # B

    def __post_init__(self):
        if self.shift == 0 or abs(self.shift) > 1:
            raise ValueError(f"shift must be a non-zero constant in [-1, 1], got {self.shift}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0 or self.folds < 2 or not 0 < self.bound < 1:
            raise ValueError("epochs, batch_size >= 1, lr > 0, folds >= 2 and bound in (0, 1) required")

    def score(self, x, y, reference, ctx):
        recipe = udp_recipe(self.epochs, self.lr, self.batch_size, augment=False, amp=ctx.train.amp)

        def fit(x_part: torch.Tensor, y_part: torch.Tensor, k: int) -> nn.Module:
            torch.manual_seed(ctx.seed * 100 + k)
            network = ctx.make_model(self.arch)
            return train_supervised(network, x_part + self.shift, y_part, recipe, ctx.device, ctx.seed * 100 + k)

        confidence, accuracy = heldout_confidence(x, y, self.folds, ctx.generator(offset=1), fit)
        ctx.notes["heldout_accuracy"] = round(accuracy, 4)
        ctx.notes["set_flagged"] = accuracy > self.bound
        return confidence

    def flag(self, scores):
        return scores > self.bound
