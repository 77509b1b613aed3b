"""Uniform sample-wise noise in the L∞ ball: the control that should *not* work."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from uebench.api import Attack, ThreatModel


@dataclass
class RandomNoise(Attack):
    """Independent uniform noise δ ~ U(-ε, ε) per pixel and per image, then clip to [0, 1].

    Random noise carries no shortcut a network can learn, so clean test accuracy should
    stay within a few points of the clean row. It calibrates every table: an attack that
    does no better than this is not an unlearnable example.

    Released as uint8 images by rounding to the nearest level (``release = "round"``), which keeps
    the noise signed and within ±ε; the float noise of earlier versions was never an image set.
    """

    name = "random-noise"
    paper = "control: uniform noise in the L∞ ball"
    release = "round"
    eps: float = 8 / 255

    def threat_model(self) -> ThreatModel:
        return ThreatModel("linf", self.eps)

    def generate(self, x, y, ctx):
        noise = (torch.rand(x.shape, generator=ctx.generator()) * 2 - 1) * self.eps
        return (x + noise).clamp(0, 1)
