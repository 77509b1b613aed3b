"""TUE, transferable unlearnable examples (attacks/tue.py), and its class-wise separability loss."""
from __future__ import annotations

import torch

from contrastive_poisons import poisons  # noqa: F401, F811 (the fixture)
from uebench.attacks.tue import class_separability
from uebench.toolkit.perturb import pgd_step

EPS = 8 / 255


def test_tue_makes_the_noise_class_separable(poisons):
    x, y, out = poisons
    start = (torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1) * EPS
    assert class_separability(out["tue"] - x, y) < 0.5 * class_separability(start, y)


def test_csd_decreases_under_its_own_gradient_step():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 4
    delta = (torch.rand(64, 3, 8, 8, generator=g) * 2 - 1) * EPS
    for _ in range(3):
        delta.requires_grad_(True)
        before = class_separability(delta, y)
        (grad,) = torch.autograd.grad(before, delta)
        delta = pgd_step(delta.detach(), grad, 0.8 / 255, EPS, descend=True)
        assert class_separability(delta, y) < before.item()


def test_csd_is_near_zero_for_classwise_noise_and_large_for_random_noise():
    g = torch.Generator().manual_seed(1)
    y = torch.arange(40) % 4
    patterns = (torch.rand(4, 3, 8, 8, generator=g) * 2 - 1) * EPS
    random_noise = (torch.rand(40, 3, 8, 8, generator=g) * 2 - 1) * EPS
    assert class_separability(patterns[y], y) < 1e-3
    assert class_separability(random_noise, y) > 1.0


def test_csd_has_finite_gradients_for_singletons_and_collapsed_classes():
    y = torch.tensor([0, 1, 1, 2])
    delta = torch.zeros(4, 3, 4, 4)
    delta[1:3] = 0.01                          # class 1 collapsed onto its centre; 0 and 2 singletons
    delta.requires_grad_(True)
    (grad,) = torch.autograd.grad(class_separability(delta, y), delta)
    assert torch.isfinite(grad).all()
    assert class_separability(delta[:1], y[:1]).item() == 0.0   # one class: nothing to separate
