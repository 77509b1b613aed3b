"""Adversarial training with PGD (Madry et al.): train on worst-case perturbed batches."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from uebench.api import Defense
from uebench.toolkit.perturb import pgd, project_linf, uniform_start
from uebench.train import autocast

DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5}


@dataclass
class AdversarialTraining(Defense):
    """PGD adversarial training (Madry et al., ICLR 2018, "Towards Deep Learning Models
    Resistant to Adversarial Attacks").

    Each training batch is replaced by its PGD adversarial example: a random start in
    the ε-ball, then ``steps`` ascent steps on the cross-entropy (signed gradient for
    L∞, normalised gradient for L2), each projected back onto the ε-ball and [0, 1];
    the model is then trained on the result. Perturbations larger than the poison's
    budget make the poison's shortcut useless (Tao et al., "Better Safe Than Sorry").

    Defaults: L∞ ε = 8/255, 10 steps of 2/255, random start (APBench); with
    ``norm="l2"`` ε = 0.5 (Tao et al.). An unset step size is 2.5·ε/steps (Madry's rule,
    which gives 2/255 at the defaults). The inner attack runs with the model in eval
    mode (``attack_mode="eval"``, as APBench and TRADES do), so the attack's forward
    passes neither use nor update batch statistics; ``attack_mode="train"`` follows
    Madry's original code.

    Deviations: none.
    """

    name = "at"
    paper = "Madry et al., Towards Deep Learning Models Resistant to Adversarial Attacks, ICLR"
    year = 2018
    protocols: ClassVar[tuple[str, ...]] = ("supervised",)
    presets: ClassVar[dict] = {"smoke": {"steps": 2}, "cpu": {"steps": 5}}
    norm: str = "linf"
    eps: float | None = None          # None: 8/255 for linf, 0.5 for l2
    step_size: float | None = None    # None: 2.5·eps/steps
    steps: int = 10
    random_start: bool = True
    attack_mode: str = "eval"

    def __post_init__(self):
        if self.norm not in DEFAULT_EPS:
            raise ValueError(f"norm must be one of {sorted(DEFAULT_EPS)}, got {self.norm!r}")
        if self.attack_mode not in ("eval", "train"):
            raise ValueError(f"attack_mode must be 'eval' or 'train', got {self.attack_mode!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        self.eps = DEFAULT_EPS[self.norm] if self.eps is None else float(self.eps)
        self.step_size = 2.5 * self.eps / self.steps if self.step_size is None else float(self.step_size)

    def attack(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The PGD adversarial example of ``x`` (detached); the model's mode is restored."""
        was_training = model.training
        model.train(self.attack_mode == "train")
        try:
            delta = self._start(x)
            if self.norm == "linf":
                delta = pgd(model, x, y, delta, eps=self.eps, step_size=self.step_size, steps=self.steps)
            else:
                delta = self._pgd_l2(model, x, y, delta)
        finally:
            model.train(was_training)
        return (x + delta).detach()

    def loss(self, model, x, y, epoch):
        return F.cross_entropy(model(self.attack(model, x, y)), y)

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        # random draws come from the global generator, which the trainer seeds
        if not self.random_start:
            return torch.zeros_like(x)
        if self.norm == "linf":
            return uniform_start(x, self.eps, generator=None)
        direction = torch.randn(x.shape, dtype=x.dtype).to(x.device)
        radius = self.eps * torch.rand(len(x), 1, 1, 1, dtype=x.dtype).to(x.device)
        return self._project_l2(direction * radius / _l2(direction), x)

    def _pgd_l2(self, model, x, y, delta):
        for _ in range(self.steps):
            delta.requires_grad_(True)
            with autocast(x.device):
                loss = F.cross_entropy(model(x + delta), y)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = self._project_l2(delta.detach() + self.step_size * grad / _l2(grad), x)
        return delta

    def _project_l2(self, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Onto ‖δ‖₂ ≤ ε per image, then onto x + δ ∈ [0, 1] (which only shrinks δ)."""
        delta = delta * (self.eps / _l2(delta)).clamp(max=1.0)
        return project_linf(delta, x, float("inf"))


def _l2(t: torch.Tensor) -> torch.Tensor:
    """Per-image L2 norms, shaped (N, 1, 1, 1), never zero."""
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
