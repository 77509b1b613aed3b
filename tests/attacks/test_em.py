"""EM, sample-wise and class-wise (attacks/em.py)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from uebench.attacks.em import EM, EMClasswise, class_mean
from uebench.attacks.rem import REM
from uebench.registry import ATTACKS

ATTACK_CLASSES = [EM, EMClasswise, REM]


def fresh(ctx):
    """The same context with its own notes, for a second, independent run."""
    return replace(ctx, notes={})


def test_class_mean_averages_members_and_keeps_absent_classes():
    noise = torch.full((3, 1, 1, 1), 0.01)
    per_sample = torch.tensor([0.02, 0.04, -0.5]).view(3, 1, 1, 1)
    labels = torch.tensor([0, 0, 2])
    out = class_mean(noise, per_sample, labels, eps=0.1)
    assert torch.allclose(out.flatten(), torch.tensor([0.03, 0.01, -0.1]))
    assert torch.equal(noise.flatten(), torch.full((3,), 0.01))      # input untouched


def test_registered_under_their_entry_point_names():
    for cls in ATTACK_CLASSES:
        assert ATTACKS.get(cls.name) is cls
    assert {EM.name, EMClasswise.name, REM.name} == {"em", "em-classwise", "rem"}


@pytest.mark.parametrize("cls", ATTACK_CLASSES, ids=lambda c: c.name)
def test_presets_are_valid_hyperparameters(cls):
    for preset in ("smoke", "demo", "cpu"):
        assert isinstance(cls.for_preset(preset), cls)


@pytest.mark.parametrize("cls", ATTACK_CLASSES, ids=lambda c: c.name)
def test_respects_budget_and_range(cls, tiny, ctx):
    x, y = tiny
    attack = cls.for_preset("smoke")
    out = attack(x, y, ctx)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert (out - x).abs().max() <= attack.eps + 1e-6
    assert out.min() >= 0 and out.max() <= 1
    assert (out - x).abs().max() > attack.eps / 4            # it did perturb


@pytest.mark.parametrize("cls", ATTACK_CLASSES, ids=lambda c: c.name)
def test_deterministic_for_a_fixed_seed(cls, tiny, ctx):
    x, y = tiny
    attack = cls.for_preset("smoke")
    first, second = attack(x, y, fresh(ctx)), attack(x, y, fresh(ctx))
    assert torch.equal(first, second)
    other_seed = attack(x, y, replace(ctx, seed=1, notes={}))
    assert not torch.equal(first, other_seed)


def test_classwise_noise_is_one_pattern_per_class(tiny, ctx):
    x, y = tiny
    x = x.clone()
    x[0, :, :4, :4] = 1.0           # saturated pixels: the pattern is clipped there only
    out = EMClasswise.for_preset("smoke")(x, y, ctx)
    delta = out - x
    inside = (out > 0) & (out < 1)
    for k in y.unique():
        members = delta[y == k]
        kept = inside[y == k]
        hi = torch.where(kept, members, torch.tensor(-1.0)).amax(0)
        lo = torch.where(kept, members, torch.tensor(1.0)).amin(0)
        seen = kept.any(0)
        assert (hi - lo)[seen].max() <= 1e-6, f"class {int(k)} has more than one pattern"
        assert members.abs().max() > 0
    assert not torch.allclose(delta[y == 0][1], delta[y == 1][0])   # patterns differ between classes


@pytest.mark.parametrize("cls", [EM, EMClasswise], ids=lambda c: c.name)
def test_em_noise_lowers_the_surrogate_loss(cls, tiny, ctx, trained_model):
    """Error-MINIMISING: one noise pass from zero must lower the surrogate's loss."""
    x, y = tiny
    attack = cls(steps=5, step_size=2 / 255, batch_size=32, subset=1.0) if cls is EMClasswise else \
        cls(steps=5, step_size=2 / 255, batch_size=32)
    craft = attack.crafting_indices(y, ctx)
    noise = attack.noise_pass(trained_model, attack.initial_noise(x, ctx), x, y, craft,
                              torch.Generator().manual_seed(0))
    poisoned = attack.perturbed(noise, x, y, torch.arange(len(x)))
    with torch.no_grad():
        clean_loss = F.cross_entropy(trained_model(x), y).item()
        poisoned_loss = F.cross_entropy(trained_model(poisoned), y).item()
    assert poisoned_loss < 0.9 * clean_loss


def test_em_stops_at_the_target_accuracy_or_the_cap(tiny, ctx):
    x, y = tiny
    EM.for_preset("smoke", stop_accuracy=0.0, max_rounds=3)(x, y, ctx)
    assert ctx.notes["em_rounds"] == 1 and ctx.notes["em_reached_stop_accuracy"]
    capped = fresh(ctx)
    EM.for_preset("smoke", stop_accuracy=1.01, max_rounds=3)(x, y, capped)
    assert capped.notes["em_rounds"] == 3 and not capped.notes["em_reached_stop_accuracy"]
    assert 0 <= capped.notes["em_surrogate_acc"] <= 1


@pytest.mark.parametrize("cls", [EM, EMClasswise])
def test_em_positive_export_keeps_only_the_positive_half_of_the_noise(tiny, ctx, cls):
    """The official pipeline adds clamp(δ·255, 0, 255): same optimisation, negative values dropped."""
    x, y = tiny
    x = x.clamp(0.1, 0.9)                     # nothing clips, so the added noise is exactly visible
    signed = cls.for_preset("smoke", export="signed")(x, y, fresh(ctx)) - x
    positive = cls.for_preset("smoke")(x, y, fresh(ctx)) - x          # the default: the official export
    assert (signed < -1e-4).any(), "the optimised noise has negative values"
    torch.testing.assert_close(positive, signed.clamp_min(0), atol=1e-6, rtol=0)


def test_em_clips_the_surrogate_gradient_as_the_official_trainer(tiny, ctx):
    """grad_clip bounds each surrogate step; a clip far below the gradient norm changes the noise."""
    x, y = tiny
    unclipped = EM.for_preset("smoke", grad_clip=0.0)(x, y, fresh(ctx)) - x
    clipped = EM.for_preset("smoke", grad_clip=1e-3)(x, y, fresh(ctx)) - x
    assert EM().grad_clip == 5.0
    assert not torch.allclose(clipped, unclipped, atol=1e-6)
