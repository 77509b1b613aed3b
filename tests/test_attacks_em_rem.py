"""Error-minimising attacks (EM sample-wise, EM class-wise, REM) and their shared PGD parts."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from uebench.attacks.em import EM, EMClasswise, class_mean
from uebench.attacks.rem import REM
from uebench.models import create_model
from uebench.toolkit.perturb import augmented_copies, batch_stream, pgd, pgd_step, project_linf
from uebench.registry import ATTACKS
from uebench.train import train_supervised, TrainConfig

ATTACK_CLASSES = [EM, EMClasswise, REM]


def fresh(ctx):
    """The same context with its own notes, for a second, independent run."""
    return replace(ctx, notes={})


@pytest.fixture(scope="module")
def trained_model():
    """A small CNN trained briefly on the tiny images: gradients that mean something."""
    from conftest import tiny_images
    x, y = tiny_images()
    torch.manual_seed(0)
    model = create_model("smallcnn", 3, 4)
    return train_supervised(model, x, y, TrainConfig(epochs=3, batch_size=32), torch.device("cpu"), 0).eval()


# -- the shared building blocks ----------------------------------------------------------

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


def test_class_mean_averages_members_and_keeps_absent_classes():
    noise = torch.full((3, 1, 1, 1), 0.01)
    per_sample = torch.tensor([0.02, 0.04, -0.5]).view(3, 1, 1, 1)
    labels = torch.tensor([0, 0, 2])
    out = class_mean(noise, per_sample, labels, eps=0.1)
    assert torch.allclose(out.flatten(), torch.tensor([0.03, 0.01, -0.1]))
    assert torch.equal(noise.flatten(), torch.full((3,), 0.01))      # input untouched


# -- the attacks -------------------------------------------------------------------------

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


def test_rem_inner_ascent_raises_the_loss(tiny, trained_model):
    x, y = tiny
    attack = REM(adv_steps=5)
    adv = attack.adversary(trained_model, x, y, torch.Generator().manual_seed(0))
    assert adv.abs().max() <= attack.adv_eps + 1e-6
    assert (x + adv).min() >= 0 and (x + adv).max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(trained_model(x + adv), y) > F.cross_entropy(trained_model(x), y)


def test_rem_noise_lowers_the_robust_loss(tiny, trained_model):
    """The defensive noise minimises the loss under the adversary (min-min-max)."""
    x, y = tiny
    attack = REM(steps=5, step_size=2 / 255, adv_steps=3, adv_step_size=2 / 255, eot_samples=2)
    delta = attack.robust_noise(trained_model, x, y, pad=1, generator=torch.Generator().manual_seed(0))
    assert delta.abs().max() <= attack.eps + 1e-6

    def robust_loss(images):
        adv = attack.adversary(trained_model, images, y, torch.Generator().manual_seed(1))
        with torch.no_grad():
            return F.cross_entropy(trained_model(images + adv), y).item()

    assert robust_loss(x + delta) < 0.97 * robust_loss(x)


def test_rem_records_what_ran(tiny, ctx):
    x, y = tiny
    REM.for_preset("smoke")(x, y, ctx)
    assert ctx.notes["rem_steps"] == REM.presets["smoke"]["train_steps"]
    assert 0 <= ctx.notes["rem_surrogate_acc"] <= 1


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
