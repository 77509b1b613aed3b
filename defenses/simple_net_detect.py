"""Simple-network detection: a shortcut is what a tiny network learns, and it generalises."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from uebench.api import Detector
from uebench.toolkit.heldout import heldout_confidence, udp_recipe
from uebench.train import train_supervised

NETWORKS = ("2nn", "linear")


@dataclass
class SimpleNetDetect(Detector):
    """Zhu et al., "Detection and Defense of Unlearnable Examples" (AAAI 2024), Algorithm 1.

    Official (hala64/udp, ``poison_detection.py`` and ``model/MLP.py``): ``simple-2NN``, a two-layer
    network flatten → Linear(d, d) → ReLU → Linear(d, classes) with d = 3072 on [0, 1] images (no
    normalisation), or ``simple-linear``, one linear layer; trained on 40,000 of the 50,000 possibly
    protected CIFAR-10 training images with SGD lr 0.01 (``--detect-lr``), momentum 0.9, weight decay
    5e-4, batch 128, 100 epochs, lr ÷10 at 75 and 90, random crop + flip for the 2NN only; the set is
    called protected when the accuracy on the held-out 10,000 exceeds the bound B = 0.7.

    Here the set is a cell's half-protected split and every image needs a score: ``folds``-fold
    cross-fitting (5: each network trains on 4/5, as the official split) gives each image the
    probability of its label under the network trained without it (``toolkit/heldout.py``); an image is
    flagged when that probability exceeds ``bound``. The held-out accuracy of the whole mix, the
    paper's statistic, goes to the record's notes. Deviations: the per-image score and flag (the paper
    decides per set); the held-out part is not cropped and flipped (the official code augments it
    too, through a transform the two parts share); no weight decay on biases (the shared trainer).
    The ``cpu`` preset trains 15 epochs with 2 folds.
    """

    name: ClassVar[str] = "simple-net-detect"
    paper: ClassVar[str] = "Zhu et al., Detection and Defense of Unlearnable Examples (simple networks)"
    year: ClassVar[int] = 2024
    presets: ClassVar[dict] = {"cpu": {"epochs": 15, "folds": 2}, "smoke": {"epochs": 1, "folds": 2}}

    network: str = "2nn"       # 2nn (simple-2NN) | linear (simple-linear)
    epochs: int = 100
    lr: float = 0.01
    batch_size: int = 128
    folds: int = 5
    bound: float = 0.7         # B

    def __post_init__(self):
        if self.network not in NETWORKS:
            raise ValueError(f"network must be one of {', '.join(NETWORKS)}, got {self.network!r}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0 or self.folds < 2 or not 0 < self.bound < 1:
            raise ValueError("epochs, batch_size >= 1, lr > 0, folds >= 2 and bound in (0, 1) required")

    def make_network(self, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        d = math.prod(image_shape)
        if self.network == "linear":
            return nn.Sequential(nn.Flatten(), nn.Linear(d, num_classes))
        return nn.Sequential(nn.Flatten(), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, num_classes))

    def score(self, x, y, reference, ctx):
        recipe = udp_recipe(self.epochs, self.lr, self.batch_size, augment=self.network == "2nn", amp=ctx.train.amp)

        def fit(x_part: torch.Tensor, y_part: torch.Tensor, k: int) -> nn.Module:
            torch.manual_seed(ctx.seed * 100 + k)
            network = self.make_network(ctx.image_shape, ctx.num_classes)
            return train_supervised(network, x_part, y_part, recipe, ctx.device, ctx.seed * 100 + k)

        confidence, accuracy = heldout_confidence(x, y, self.folds, ctx.generator(offset=1), fit)
        ctx.notes["heldout_accuracy"] = round(accuracy, 4)
        ctx.notes["set_flagged"] = accuracy > self.bound      # the paper's decision on the whole mix
        return confidence

    def flag(self, scores):
        return scores > self.bound
