"""Stable error-minimising noise (SEM): REM with a random inner perturbation."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from uebench.attacks.rem import REM
from uebench.toolkit.images import add_levels
from uebench.toolkit.perturb import uniform_start


@dataclass
class SEM(REM):
    """Liu et al., "Stable Unlearnable Example: Enhancing the Robustness of Unlearnable Examples
    via Stable Error-Minimizing Noise", AAAI 2024 (liuyixin-louis/Stable-Unlearnable-Example).

    REM's min-min-max, with one change in the noise's own step: the perturbation δa the noise is
    made robust to is one uniform draw U(−ρa, ρa) per pixel (clipped to the image range), not a PGD
    ascent (the official ``StablePGDDefender``: ``--atk-pgd-steps`` and ``--atk-pgd-step-size`` are
    not used there). The surrogate is still adversarially trained with PGD at ρa, on the noised
    images, as in REM. Everything else is REM's (:class:`~uebench.attacks.rem.REM`, with its
    defaults and deviations): ρu = 8/255, 10 descent steps of 1.6/255 from a fresh random start,
    5 draws of crop + flip per step, ρa = 4/255, 5,000 surrogate steps of SGD lr 0.1 ÷10 every 2,000,
    and the same ``cpu`` preset, so a SEM row and a REM row differ by exactly that step.

    Export as the official one: the noise is rounded to integer pixel levels (int8 in [−8, 8]),
    added to the uint8 image and clipped, so the poison lies on the uint8 grid. Deviation: the
    surrogate trains on the float noise of its batch (the official one on the rounded levels).
    """

    name = "sem"
    paper = "Liu et al., Stable Unlearnable Example: Enhancing the Robustness of Unlearnable Examples via Stable Error-Minimizing Noise, AAAI"
    year = 2024

    def robust_noise(self, model, x, y, pad, generator, fill="reflect"):
        self._crafting_noise = True      # tells adversary() which of the two inner steps it serves
        try:
            return super().robust_noise(model, x, y, pad, generator, fill)
        finally:
            self._crafting_noise = False

    def adversary(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
        """Inside the noise's step: one random draw in the ρa-ball; for the surrogate's training: REM's PGD."""
        if not getattr(self, "_crafting_noise", False):
            return super().adversary(model, x, y, generator)
        return ((x + uniform_start(x, self.adv_eps, generator)).clamp(0, 1) - x).detach()

    def generate(self, x, y, ctx):
        poisoned = super().generate(x, y, ctx).cpu()
        return add_levels(x.cpu(), ((poisoned - x.cpu()) * 255).round())   # the noise as int8 levels

    def passes_per_image(self, n_images: int) -> float:
        per_noise = self.steps * self.eot_samples       # no inner ascent: one pass per draw
        per_train_image = per_noise + self.adv_steps + 1
        return self.train_steps * min(self.batch_size, n_images) * per_train_image / n_images + per_noise
