"""Orthogonal projection (defenses/orthogonal_projection.py): a linear model's class directions removed."""
from __future__ import annotations

import torch

from conftest import make_ctx
from uebench.defenses.orthogonal_projection import OrthogonalProjection


def test_the_projection_is_the_closed_form_complement_of_the_weights_rows():
    """The official code removes each QR direction in turn; that is x − Wᵀ(WWᵀ)⁻¹Wx."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(50, 3, 8, 8, generator=generator, dtype=torch.float64)
    w = torch.randn(10, 192, generator=generator, dtype=torch.float64)
    flat = x.flatten(1)
    expected = flat - (flat @ w.T) @ torch.linalg.solve(w @ w.T, w)
    got = OrthogonalProjection.project(x, w).flatten(1)
    assert torch.allclose(got, expected, atol=1e-10)
    assert (got @ w.T).abs().max() < 1e-10                              # nothing left along any class direction
    assert torch.allclose(OrthogonalProjection.project(x, 3 * w), OrthogonalProjection.project(x, w), atol=1e-10)


def class_pattern_data(n=400, classes=4, shape=(3, 8, 8), eps=8 / 255):
    """Random images with a class-wise ±eps pattern: the label is in the pattern only."""
    generator = torch.Generator().manual_seed(1)
    patterns = eps * torch.randn((classes, *shape), generator=generator).sign()
    y = torch.arange(n) % classes
    x = (torch.rand((n, *shape), generator=generator) * (1 - 2 * eps) + eps + patterns[y])
    return x, y, patterns


def test_the_linear_model_finds_a_class_wise_pattern_and_the_projection_removes_it():
    x, y, _ = class_pattern_data()
    defense = OrthogonalProjection(batch_size=32)       # as many steps on 400 images as the default takes on 13,000
    weights = defense.linear_weights(x, y, num_classes=4)
    flat = x.flatten(1)
    assert ((flat @ weights.T).argmax(1) == y).float().mean() > 0.8    # the shortcut is linear (chance: 0.25)
    # a linear model trained afresh on the projected images reads far less of the label from them
    projected = OrthogonalProjection.project(x, weights)
    again = defense.linear_weights(projected, y, num_classes=4)
    assert ((projected.flatten(1) @ again.T).argmax(1) == y).float().mean() < 0.55


def test_purify_returns_images_in_range_and_notes_what_it_removed():
    x, y, _ = class_pattern_data()
    ctx = make_ctx()
    torch.manual_seed(0)
    out = OrthogonalProjection(epochs=4).purify(x, y, (x[:0], y[:0]), ctx)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert "removed 4 directions" in ctx.notes["purify"]
    torch.manual_seed(0)
    assert torch.equal(out, OrthogonalProjection(epochs=4).purify(x, y, (x[:0], y[:0]), make_ctx()))   # seeded, in order
