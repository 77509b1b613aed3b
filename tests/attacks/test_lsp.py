"""LSP, linearly separable perturbations (attacks/lsp.py)."""
from __future__ import annotations

import pytest
import torch

from conftest import grey_images, make_ctx
from uebench.attacks.lsp import LSP
from uebench.budget import check_budget, declared_threat_model


def test_lsp_uses_its_l2_budget_exactly():
    x, y = grey_images()
    out = LSP()(x, y, make_ctx())
    budget = declared_threat_model(LSP(), (3, 16, 16)).eps
    assert budget == pytest.approx((3 * 16 * 16) ** 0.5 * 6 / 255)
    assert LSP().threat_model((3, 32, 32)).eps == pytest.approx(1.3041, abs=1e-4)   # the paper's CIFAR value
    norms = (out - x).flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, budget), atol=1e-5, rtol=0)
    check_budget(x, out, declared_threat_model(LSP(), (3, 16, 16)))


def test_lsp_is_deterministic_per_seed():
    x, y = grey_images()
    assert torch.equal(LSP()(x, y, make_ctx(0)), LSP()(x, y, make_ctx(0)))
    assert not torch.equal(LSP()(x, y, make_ctx(0)), LSP()(x, y, make_ctx(1)))


def test_lsp_noise_is_constant_on_each_patch():
    x, y = grey_images(size=16)
    delta = LSP(patch_size=8)(x, y, make_ctx()) - x
    blocks = delta.unfold(2, 8, 8).unfold(3, 8, 8)                 # (N, C, 2, 2, 8, 8)
    spread = blocks.amax(dim=(-1, -2)) - blocks.amin(dim=(-1, -2))
    assert spread.max() < 1e-6
    assert (blocks[:, :, 0, 0] - blocks[:, :, 1, 1]).abs().max() > 1e-3   # but differs between patches


def test_lsp_default_noise_is_samplewise_but_linearly_separable_by_class():
    x, y = grey_images(n=80)
    delta = (LSP()(x, y, make_ctx()) - x).flatten(1)
    assert not torch.allclose(delta[0], delta[4])                  # two images of class 0 differ
    centroids = torch.stack([delta[y == k].mean(0) for k in range(4)])
    nearest = torch.cdist(delta, centroids).argmin(1)
    assert torch.equal(nearest, y)                                 # yet their class is plain to see


def test_lsp_classwise_gives_one_pattern_per_class():
    x, y = grey_images()
    delta = LSP(classwise=True)(x, y, make_ctx()) - x
    for k in range(4):
        torch.testing.assert_close(delta[y == k], delta[y == k][:1].expand_as(delta[y == k]), atol=1e-6, rtol=0)
    assert (delta[0] - delta[1]).abs().max() > 1e-3


def test_lsp_shrinks_its_patch_for_tiny_grey_images():
    x, y = grey_images(n=30, channels=1, size=8, classes=3)
    ctx = make_ctx(classes=3, shape=(1, 8, 8))
    out = LSP()(x, y, ctx)
    assert ctx.notes["lsp_patch_size"] == 4       # 1 feature cannot place 3 classes; 4 can
    check_budget(x, out, declared_threat_model(LSP(), (1, 8, 8)))


def test_lsp_handles_imbalanced_classes():
    x, _ = grey_images(n=30)
    y = torch.tensor([0] * 20 + [1] * 7 + [2] * 2 + [3])
    delta = (LSP()(x, y, make_ctx()) - x).flatten(1)
    assert len({tuple(d.tolist()) for d in delta[y == 0]}) == 20  # 20 distinct points for class 0


def test_lsp_releases_its_images_as_the_official_script_stores_them():
    """cifar_train.py of the official code adds δ to x/255 in float64 and stores
    clip(255·(x/255 + δ), 0, 255).astype(np.uint8): the same δ through numpy gives the same
    images, level for level, and within the L2 budget a truncated release may use."""
    import numpy as np

    from uebench.release import release_images

    x, y = grey_images(n=200, size=32, classes=10)
    x = (x * 255).round() / 255                                   # uint8 images
    delta = LSP().noise(x, y, make_ctx(classes=10, shape=(3, 32, 32)))
    released = LSP()(x, y, make_ctx(classes=10, shape=(3, 32, 32)))
    official = np.clip((((x * 255).round().numpy().astype(np.uint8) / 255.0) + delta.numpy()) * 255, 0, 255)
    assert torch.equal((released * 255).round().to(torch.uint8), torch.from_numpy(official.astype(np.uint8)))
    check_budget(x, released, declared_threat_model(LSP(), (3, 32, 32)), released="truncate")
    # Why LSP exports itself: the generic rule reads a value just below a level as the level
    # (measured: 0.1 % of the values, 1,621 of 1.5 M on 500 such images).
    generic = release_images(x, (x + delta).clamp(0, 1), "truncate")
    assert (generic != released).sum() > 0
