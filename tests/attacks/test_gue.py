"""GUE, game-theoretic unlearnable examples (attacks/gue.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import make_ctx
from uebench.attacks.gue import GUE, Generator, wrong_class_loss


def batch(n=16, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 16, 16), generator=g).float() / 255, torch.arange(n) % classes


def state(module):
    return [p.detach().clone() for p in module.parameters()]


def test_the_payoff_is_the_largest_wrong_class_cross_entropy():
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    brute = torch.stack([max(F.cross_entropy(logits[i:i + 1], torch.tensor([k])) for k in range(5) if k != int(y[i]))
                         for i in range(6)]).mean()
    assert torch.allclose(wrong_class_loss(logits, y), brute, atol=1e-6)


def test_the_generator_keeps_the_image_shape_and_bounds_its_noise():
    for shape in ((3, 32, 32), (1, 28, 28), (3, 16, 16)):
        out = Generator(shape[0], width=4)(torch.rand(2, *shape))
        assert out.shape == (2, *shape) and out.abs().max() < 1


def test_without_a_best_response_the_value_gap_is_zero_and_the_generator_stays():
    """With no inner steps θ_T = θ, so q = g(a, θ) − g(a, θ) and its gradient in a vanish: the
    generator must not move, while the classifier still takes its step."""
    x, y = batch()
    torch.manual_seed(0)
    attack = GUE(inner_steps=0, width=4)
    generator, classifier = Generator(3, 4), make_ctx().make_model()
    before_g, before_c = state(generator), state(classifier)
    attack.game_step(generator, classifier, x, y)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(before_g, state(generator)))
    assert not all(torch.equal(a, b) for a, b in zip(before_c, state(classifier)))


def test_with_a_best_response_both_players_move_and_the_follower_copy_leaves_the_classifier_alone():
    x, y = batch()
    torch.manual_seed(0)
    attack = GUE(inner_steps=3, width=4)
    generator, classifier = Generator(3, 4), make_ctx().make_model()
    before_g = state(generator)
    lam = attack.game_step(generator, classifier, x, y)
    assert lam >= 0
    assert not all(torch.equal(a, b) for a, b in zip(before_g, state(generator)))


def test_the_poison_is_the_truncated_export_within_the_budget():
    x, y = batch(32)
    poisoned = GUE(epochs=1, batch_size=16, width=4, inner_steps=1)(x, y, make_ctx())
    levels = poisoned * 255
    assert torch.equal(levels, levels.round())
    assert (poisoned - x).abs().max() <= 8 / 255 + 1e-6 and (poisoned - x).abs().max() > 0


def test_bad_hyperparameters_are_refused():
    for bad in (dict(epochs=0), dict(width=0), dict(inner_steps=-1), dict(eta=0.0)):
        with pytest.raises(ValueError):
            GUE(**bad)


def test_a_saturated_generator_stays_within_the_budget_after_the_truncating_export():
    """Regression: where tanh saturates the noise is ±ε in float32, whose ×255 lies a hair beyond 8, and
    the floor went to −9 levels (a cell failed the budget guard with 9/255)."""
    attack = GUE()
    noise = attack.eps * torch.tensor([-1.0, 1.0, -0.99999, 0.5])        # float32, as the generator gives it
    levels = attack.export_levels(noise)
    assert levels.tolist() == [-8.0, 8.0, -8.0, 4.0]
