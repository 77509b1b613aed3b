"""Orthogonal projection: remove the directions a linear model finds in the protected set."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from uebench.api import Defense


@dataclass
class OrthogonalProjection(Defense):
    """Sandoval-Segura et al., "What Can We Learn from Unlearnable Datasets?", NeurIPS 2023
    (psandovalsegura/learn-from-unlearnable, ``orthogonal_projection_step_1.py`` and ``_step_2.py``).

    A linear shortcut is a direction a linear model can read the label from. Step 1 trains a
    bias-free linear classifier W (classes × C·H·W) on the flattened protected images in [0, 1]
    (not normalised, not augmented): cross-entropy, SGD lr 0.1 without momentum or weight decay, batch
    1024 in index order (the official loader does not shuffle), 20 epochs, lr ÷10 at epochs 10 and 15.
    Step 2 takes the classes' weight vectors, scaled to unit norm, as the columns of a matrix, an
    orthonormal basis Q of their span by QR, and projects every image onto the complement:
    x ← x − Q Qᵀ x (one direction per class removed). The victim trains on the projected set.

    Deviations: the projected images are clamped to [0, 1] once (the official code keeps them as
    floats, and its victim's ColorJitter clamps every training view to [0, 1] on the way, so what
    that victim sees lies in [0, 1] too); the victim trains with the table's recipe, as every defense
    column does, not the official ResNet-18 recipe (50 epochs, rotation, shear, colour jitter and
    CutMix). Supervised protocol only (the linear model needs the labels).
    """

    name: ClassVar[str] = "orthogonal-projection"
    paper: ClassVar[str] = "Sandoval-Segura et al., What Can We Learn from Unlearnable Datasets?"
    year: ClassVar[int] = 2023
    protocols: ClassVar[tuple[str, ...]] = ("supervised",)

    epochs: int = 20
    lr: float = 0.1
    batch_size: int = 1024

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("epochs and batch_size must be >= 1 and lr > 0")

    def linear_weights(self, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Step 1: the weights (classes × d) of the linear model trained on the flattened images."""
        flat = x.flatten(1)
        model = nn.Linear(flat.shape[1], num_classes, bias=False)
        opt = torch.optim.SGD(model.parameters(), lr=self.lr)
        milestones = (int(0.5 * self.epochs), int(0.75 * self.epochs))
        for epoch in range(self.epochs):
            for group in opt.param_groups:     # MultiStepLR, stepped once per epoch
                group["lr"] = self.lr * 0.1 ** sum(epoch >= m for m in milestones)
            for xb, yb in zip(flat.split(self.batch_size), y.split(self.batch_size)):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
        return model.weight.detach()

    @staticmethod
    def project(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Step 2: ``x`` with its components along the span of ``weights``' rows removed."""
        directions = F.normalize(weights, dim=1)
        q, _ = torch.linalg.qr(directions.T)       # (d, classes), orthonormal columns
        flat = x.flatten(1)
        return (flat - (flat @ q) @ q.T).reshape(x.shape)

    def purify(self, x, y, reference, ctx):
        weights = self.linear_weights(x.cpu(), y.cpu(), ctx.num_classes)
        projected = self.project(x.cpu(), weights)
        ctx.notes["purify"] = (f"removed {weights.shape[0]} directions (a linear model's class weights, "
                               f"{self.epochs} epochs); {float((projected < 0).float().mean() + (projected > 1).float().mean()):.4f} "
                               f"of the values clamped to [0, 1]")
        ctx.previews["projected"] = projected[:8].clamp(0, 1)
        return projected.clamp(0, 1)
