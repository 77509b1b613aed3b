"""TUE, transferable unlearnable examples (attacks/tue.py), and its class-wise separability loss."""
from __future__ import annotations

import numpy as np
import torch

from conftest import grey_images, make_ctx
from contrastive_poisons import poisons  # noqa: F401, F811 (the fixture)
from uebench.attacks.tue import TUE, class_separability
from uebench.budget import check_budget, declared_threat_model
from uebench.release import release_images
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


def test_tue_releases_its_images_as_the_official_evaluation_loads_them():
    """TransferCIFAR10Pair (official utils.py) adds clamp(255·δ, −9, 9) to the uint8 images in
    float32, clips to [0, 255] and truncates with astype(np.uint8): the same δ through numpy gives
    the same images, level for level, within the L∞ budget."""
    _, y = grey_images(n=200, size=32, classes=10)
    # uint8 images of every level: at level 24, x + (−ε) − x is a float32 ulp below −ε, which the
    # official truncation would take to a ninth level (found by the budget guard on the subset)
    x = torch.randint(0, 256, (200, 3, 32, 32), generator=torch.Generator().manual_seed(0)).float() / 255
    attack = TUE(epochs=1, pgd_steps=15, batch_size=100)      # 12/255 of travel: many values end at ±ε
    delta = attack.noise(x, y, make_ctx(classes=10, shape=(3, 32, 32)))
    released = attack(x, y, make_ctx(classes=10, shape=(3, 32, 32)))
    data = (x * 255).round().numpy().astype(np.uint8).astype(np.float32)
    noise_255 = (delta * 255).clamp(-9, 9).numpy()
    official = np.clip(data + noise_255, 0, 255).astype(np.uint8)
    assert torch.equal((released * 255).round().to(torch.uint8), torch.from_numpy(official))
    check_budget(x, released, declared_threat_model(attack, (3, 32, 32)), released="truncate")
    # Why TUE exports itself: float32 steps leave values a hair below a level, which the official
    # truncation drops a level and the generic rule reads as the level (measured: 26,730 of 614,400).
    generic = release_images(x, (x + delta).clamp(0, 1), "truncate")
    assert (generic != released).sum() > 0
