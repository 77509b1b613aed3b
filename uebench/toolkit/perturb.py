"""Building blocks for optimisation-based perturbations (EM, REM, TAP, ...).

Everything here is batched and works on images in [0, 1]. A perturbation ``delta``
lives in the L∞ ball of radius ``eps`` *and* keeps ``x + delta`` inside [0, 1], so the
stored noise is exactly what the poisoned image carries.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

# the shared training helpers, defined in uebench.train; batches and batch_stream are importable
# from here too (as the attacks import them)
from uebench.train import autocast, batch_stream, batches, random_crop_flip

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def project_linf(delta: torch.Tensor, x: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Project ``delta`` onto ‖δ‖∞ ≤ eps and, when ``x`` is given, onto x + δ ∈ [0, 1].

    ``x`` is None for noise not tied to one image (a class-wise pattern); its image
    range is then enforced when the pattern is added.
    """
    delta = delta.clamp(-eps, eps)
    if x is None:
        return delta
    return (x + delta).clamp(0, 1) - x


def pgd_step(delta: torch.Tensor, grad: torch.Tensor, step_size: float, eps: float,
             x: torch.Tensor | None = None, descend: bool = False) -> torch.Tensor:
    """One signed-gradient step on a batch of perturbations, then the projection.

    ``descend=False`` climbs the loss (adversarial examples, the inner max of REM);
    ``descend=True`` lowers it (error-minimising noise).
    """
    direction = -1.0 if descend else 1.0
    return project_linf(delta + direction * step_size * grad.sign(), x, eps)


def uniform_start(like: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """δ ~ U(-eps, eps), drawn on the CPU from ``generator`` (so it is seeded on any device)."""
    noise = torch.rand(like.shape, generator=generator, dtype=like.dtype)
    return ((noise * 2 - 1) * eps).to(like.device)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, *,
        eps: float, step_size: float, steps: int, descend: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        loss_fn: LossFn = F.cross_entropy) -> torch.Tensor:
    """``steps`` projected signed-gradient steps on ``delta`` for ``loss_fn(model(T(x + δ)), y)``.

    ``transform`` (e.g. :func:`augmented_copies` with a fixed draw) is applied to the
    perturbed batch before the model, for expectation-over-transformation attacks.
    Gradients flow to ``delta`` only; the model's mode (train/eval) is left as it is,
    so set it before calling. Returns the final δ, detached.
    """
    device = x.device
    delta = project_linf(delta.detach(), x, eps)
    for _ in range(steps):
        delta.requires_grad_(True)
        inputs = x + delta
        if transform is not None:
            inputs = transform(inputs)
        with autocast(device):
            loss = loss_fn(model(inputs), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = pgd_step(delta.detach(), grad, step_size, eps, x, descend)
    return delta


def augmented_copies(x: torch.Tensor, copies: int, pad: int,
                     generator: torch.Generator | None = None, fill: str = "reflect") -> torch.Tensor:
    """``copies`` random crop+flip views of each image, stacked as (copies·N, C, H, W).

    Uses the shared trainer's crop (translation by up to ``pad`` px, ``fill`` padding) and
    flip, so the expectation is over the transformations the victim actually trains with.
    Built from pad, gather and where, it is differentiable with respect to ``x``. Copy
    ``k`` of image ``i`` is row ``k·N + i`` (labels: ``y.repeat(copies)``).
    """
    return random_crop_flip(x.repeat(copies, 1, 1, 1), pad, flip=True, generator=generator, fill=fill)
