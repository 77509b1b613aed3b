"""UCL (contrastive poisoning, class-wise and sample-wise) and TUE: budget, determinism, structure, CSD."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from conftest import tiny_images
from uebench.attacks.tue import TUE, class_separability
from uebench.attacks.ucl import UCL, UCLClasswise
from uebench.budget import check_budget
from uebench.toolkit.perturb import pgd_step
from uebench.registry import ATTACKS

EPS = 8 / 255
TINY = dict(batch_size=32)


def small_attacks():
    return {
        "ucl-classwise": UCLClasswise(epochs=2, encoder_steps=2, noise_batches=2, **TINY),
        "ucl": UCL(epochs=1, init_epochs=2, init_steps=2, **TINY),
        "tue": TUE(epochs=2, pgd_steps=3, **TINY),
        "tue-ssl": TUE(epochs=1, pgd_steps=2, w_ssl=1.0, **TINY),
    }


@pytest.fixture(scope="module")
def poisons():
    """Every attack run once on the tiny set (no cache), shared by the tests below."""
    from uebench.context import Context
    x, y = tiny_images()
    ctx = Context(device=torch.device("cpu"), seed=0, num_classes=4, image_shape=(3, 16, 16), progress=False)
    return x, y, {name: attack(x, y, replace(ctx, notes={})) for name, attack in small_attacks().items()}


@pytest.mark.parametrize("name", ["ucl-classwise", "ucl", "tue", "tue-ssl"])
def test_poisons_respect_the_linf_budget_and_use_it(poisons, name):
    x, _, out = poisons
    poisoned = out[name]
    check_budget(x, poisoned, small_attacks()[name].threat_model())
    delta = (poisoned - x).abs()
    assert delta.max() <= EPS + 1e-6
    assert poisoned.min() >= 0 and poisoned.max() <= 1
    assert delta.mean() > 0.3 * EPS          # not a do-nothing attack


def test_classwise_noise_is_identical_within_a_class_and_differs_between_classes(poisons):
    x, y, out = poisons
    delta = out["ucl-classwise"] - x        # tiny images lie in [0.3, 0.8]: nothing is clipped
    for k in range(4):
        members = delta[y == k]
        assert torch.allclose(members, members[:1].expand_as(members), atol=1e-6)
    assert not torch.allclose(delta[y == 0][0], delta[y == 1][0], atol=1e-3)


def test_samplewise_ucl_gives_each_image_its_own_noise(poisons):
    x, y, out = poisons
    delta = out["ucl"] - x
    members = delta[y == 0]
    assert (members - members[:1]).abs().amax() > 1e-3


@pytest.mark.parametrize("name", ["ucl-classwise", "ucl", "tue-ssl"])
def test_attacks_are_deterministic(poisons, ctx, name):
    x, y, out = poisons
    again = small_attacks()[name](x, y, replace(ctx, cache_dir=None, notes={}))
    assert torch.equal(again, out[name])


def test_samplewise_ucl_reuses_the_cached_classwise_noise_without_changing_its_result(poisons, ctx):
    x, y, out = poisons
    cached_ctx = replace(ctx, notes={})
    classwise = UCLClasswise(epochs=2, encoder_steps=2, noise_batches=2, **TINY)
    classwise(x, y, cached_ctx)
    first = UCL(epochs=1, init_epochs=2, init_steps=2, **TINY)(x, y, cached_ctx)
    assert len(list((ctx.cache_dir / "ucl").glob("*.pt"))) == 1      # one class-wise run, shared
    assert torch.equal(first, out["ucl"])                            # same as without the cache


def test_tue_makes_the_noise_class_separable(poisons):
    x, y, out = poisons
    start = (torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1) * EPS
    assert class_separability(out["tue"] - x, y) < 0.5 * class_separability(start, y)


def test_attacks_work_on_one_channel_images_of_any_size_and_class_count(ctx):
    x, y = tiny_images(n=50, channels=1, size=8, classes=10)
    c = replace(ctx, num_classes=10, image_shape=(1, 8, 8), cache_dir=None)
    for name, attack in small_attacks().items():
        poisoned = attack(x, y, replace(c, notes={}))
        assert poisoned.shape == x.shape, name
        check_budget(x, poisoned, attack.threat_model())


# -- CSD ------------------------------------------------------------------------------

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


# -- registry and presets -------------------------------------------------------------

@pytest.mark.parametrize("name,cls", [("ucl", UCL), ("ucl-classwise", UCLClasswise), ("tue", TUE)])
def test_registered_as_contrastive_attacks_with_valid_presets(name, cls):
    assert ATTACKS.get(name) is cls
    assert cls.target == "contrastive"
    for preset in ("smoke", "demo", "cpu"):
        instance = cls.for_preset(preset)
        assert instance.threat_model().eps == pytest.approx(EPS)
