"""AR, autoregressive perturbations (attacks/ar.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from conftest import grey_images, make_ctx
from uebench.attacks.ar import AR
from uebench.budget import check_budget


def test_ar_uses_l2_one_exactly_and_is_deterministic():
    x, y = grey_images()
    out = AR()(x, y, make_ctx())
    norms = (out - x).flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)
    check_budget(x, out, AR().threat_model())
    assert AR().threat_model().norm == "l2" and AR().threat_model().eps == 1.0
    assert torch.equal(out, AR()(x, y, make_ctx()))
    assert not torch.equal(out, AR()(x, y, make_ctx(seed=1)))


def test_ar_noise_is_cancelled_by_its_own_class_filter_only():
    x, y = grey_images(n=40)
    ctx = make_ctx()
    delta = AR()(x, y, ctx) - x
    coeffs = AR().find_coefficients(make_ctx(), 3, (16, 16))      # the same seed draws the same processes
    filters = coeffs.clone()
    filters[:, :, -1, -1] = -1
    # Per-channel filtering (groups) with each class's filter: (N, K, C, H-2, W-2)
    response = torch.stack([F.conv2d(delta, f[:, None], groups=3) for f in filters], dim=1)
    energy = response.abs().flatten(2).sum(2)                      # (N, K)
    assert torch.equal(energy.argmin(1), y)
    own = energy[torch.arange(len(y)), y]
    assert (own < 1e-3 * energy.median()).all()                    # exactly 0 up to float error
    assert not torch.allclose(delta[0], delta[4])                  # sample-wise: fresh start per image


def test_ar_recursion_fills_each_pixel_from_its_causal_window():
    ar = AR(crop=2)
    coeffs = AR().find_coefficients(make_ctx(classes=2), 3, (6, 6))
    signal = ar.ar_noise(coeffs, (6, 6), torch.Generator().manual_seed(0))    # (2, 3, 6, 6)
    i, j = 3, 4
    expected = (signal[:, :, i - 2:i + 1, j - 2:j + 1] * coeffs).sum(dim=(2, 3))
    torch.testing.assert_close(signal[:, :, i, j], expected)


def test_ar_works_on_grey_images_with_few_classes():
    x, y = grey_images(n=30, channels=1, size=8, classes=3)
    ctx = make_ctx(classes=3, shape=(1, 8, 8))
    out = AR()(x, y, ctx)
    check_budget(x, out, AR().threat_model())
    assert ctx.notes["ar_min_response"] > 0
