"""Contrastive-style augmentations of a given strength, for the attacks that craft through them.

AUE and AAP (Wang, Zhu and Gao, NeurIPS 2024) optimise their noise through the augmentations a
contrastive learner uses, scaled by one number, the strength s: a random resized crop of scale
(1 − 0.9 s, 1), a flip, colour jitter 0.4 s / 0.4 s / 0.4 s / 0.1 s (probability 0.8 s) and
random grayscale (probability 0.2 s). s = 1 is SimCLR's recipe; s = 0 leaves only the flip. The
official code builds the same pipeline with kornia (``utils.Augment.aug_cl``), so it is
differentiable with respect to the images and draws its parameters per image from torch's
global generator (``Attack.__call__`` seeds it with the cell's seed).
"""
from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
import torch.nn as nn

from uebench.api import Defense


def strength_augmentation(strength: float, channels: int, size: tuple[int, int]) -> nn.Module:
    """The official ``aug_cl`` of strength ``strength`` on [0, 1] batches of ``size`` images.

    The crop's smallest scale is floored at 0.05 and the jitter probability capped at 0.99, as in
    the official code. Colour jitter and grayscale apply to 3-channel images only.
    """
    if not 0 <= strength <= 1:
        raise ValueError(f"augmentation strength must be in [0, 1], got {strength}")
    ops: list[nn.Module] = [K.RandomResizedCrop(tuple(size), scale=(max(1 - 0.9 * strength, 0.05), 1.0)),
                            K.RandomHorizontalFlip(p=0.5)]
    if channels == 3 and strength > 0:
        ops += [K.ColorJitter(0.4 * strength, 0.4 * strength, 0.4 * strength, 0.1 * strength,
                              p=min(0.99, 0.8 * strength)),
                K.RandomGrayscale(p=0.2 * strength)]
    return nn.Sequential(*ops)


@dataclass
class AugmentedTraining(Defense):
    """Training with the strength-``strength`` augmentation on every batch: the shared trainer's
    hook that trains AAP's reference model (a helper, not a registered defense)."""

    strength: float = 1.0

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if getattr(self, "_pipeline", None) is None:       # built on the first batch, when the shape is known
            self._pipeline = strength_augmentation(self.strength, x.shape[1], tuple(x.shape[-2:]))
        with torch.no_grad():
            return self._pipeline(x), y
