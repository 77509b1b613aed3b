"""A training-free baseline detector: the high-frequency energy an image carries."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import kornia.filters
import torch

from uebench.api import Detector


@dataclass
class ResidualDetect(Detector):
    """Baseline (uebench's own): how far each image lies from its 3×3 median-filtered self.

    Most unlearnable noises are high-frequency patterns of a few /255 per pixel, which a median
    filter removes; natural texture survives it in part. The score is the mean absolute residual
    |x − median₃(x)| per image; the flag, a residual above the ``quantile`` of the clean reference
    split's residuals (so about 1 − quantile of clean images are flagged). No model is trained: the
    detection table reads the learned detectors against it.
    """

    name: ClassVar[str] = "residual-detect"
    paper: ClassVar[str] = "baseline: median-filter residual energy (uebench)"
    quantile: float = 0.95

    def __post_init__(self):
        if not 0 < self.quantile < 1:
            raise ValueError(f"quantile must lie in (0, 1), got {self.quantile}")

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([(part - kornia.filters.median_blur(part, 3)).abs().flatten(1).mean(1)
                          for part in x.split(1024)])

    def score(self, x, y, reference, ctx):
        self.bound = float(torch.quantile(self.residual(reference[0]), self.quantile)) if len(reference[0]) else 0.0
        ctx.notes["bound"] = round(self.bound, 6)
        return self.residual(x)

    def flag(self, scores):
        return scores > self.bound
