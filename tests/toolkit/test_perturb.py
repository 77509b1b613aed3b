"""PGD steps, projections and batching (uebench.toolkit.perturb), which the attacks share."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from uebench.toolkit.perturb import augmented_copies, batch_stream, pgd, pgd_step, project_linf


def test_project_linf_enforces_ball_and_pixel_range():
    x = torch.tensor([0.0, 0.01, 0.5, 0.99, 1.0])
    delta = torch.tensor([-0.2, -0.2, 0.2, 0.2, 0.2])
    projected = project_linf(delta, x, 0.05)
    assert projected.abs().max() <= 0.05 + 1e-7
    assert ((x + projected) >= 0).all() and ((x + projected) <= 1).all()
    assert torch.allclose(projected, torch.tensor([0.0, -0.01, 0.05, 0.01, 0.0]))
    assert torch.equal(project_linf(delta, None, 0.05), delta.clamp(-0.05, 0.05))


def test_pgd_step_direction():
    delta, grad = torch.zeros(3), torch.tensor([2.0, -1.0, 0.0])
    assert torch.equal(pgd_step(delta, grad, 0.1, 1.0), torch.tensor([0.1, -0.1, 0.0]))
    assert torch.equal(pgd_step(delta, grad, 0.1, 1.0, descend=True), torch.tensor([-0.1, 0.1, 0.0]))


def test_pgd_ascent_and_descent_move_the_loss_opposite_ways(tiny, trained_model):
    x, y = tiny
    base = F.cross_entropy(trained_model(x), y).item()
    kw = dict(eps=8 / 255, step_size=2 / 255, steps=5)
    up = pgd(trained_model, x, y, torch.zeros_like(x), **kw)
    down = pgd(trained_model, x, y, torch.zeros_like(x), descend=True, **kw)
    assert F.cross_entropy(trained_model(x + up), y).item() > base
    assert F.cross_entropy(trained_model(x + down), y).item() < base


def test_augmented_copies_are_differentiable_and_seeded(tiny):
    x = tiny[0][:8].clone().requires_grad_(True)
    views = augmented_copies(x, 3, 2, torch.Generator().manual_seed(0))
    assert views.shape == (24, *x.shape[1:])
    views.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    again = augmented_copies(x.detach(), 3, 2, torch.Generator().manual_seed(0))
    assert torch.equal(views.detach(), again)
    assert not torch.equal(views.detach(), x.detach().repeat(3, 1, 1, 1))   # it did transform


def test_batch_stream_batches_are_full_and_cover_the_set():
    stream = batch_stream(10, 4, torch.Generator().manual_seed(0))
    first_epoch = [next(stream) for _ in range(2)]                  # 10 // 4 full batches
    assert all(len(b) == 4 for b in first_epoch)
    assert len(torch.cat(first_epoch).unique()) == 8
