"""UCL and TUE, the contrastive attacks (attacks/ucl.py, attacks/tue.py): what they share, and UCL."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from conftest import tiny_images
from contrastive_poisons import TINY, poisons, small_attacks  # noqa: F401, F811 (the fixture)
from uebench.attacks.tue import TUE
from uebench.attacks.ucl import UCL, UCLClasswise
from uebench.budget import check_budget
from uebench.registry import ATTACKS

EPS = 8 / 255


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


def test_attacks_work_on_one_channel_images_of_any_size_and_class_count(ctx):
    x, y = tiny_images(n=50, channels=1, size=8, classes=10)
    c = replace(ctx, num_classes=10, image_shape=(1, 8, 8), cache_dir=None)
    for name, attack in small_attacks().items():
        poisoned = attack(x, y, replace(c, notes={}))
        assert poisoned.shape == x.shape, name
        check_budget(x, poisoned, attack.threat_model())


@pytest.mark.parametrize("name,cls", [("ucl", UCL), ("ucl-classwise", UCLClasswise), ("tue", TUE)])
def test_registered_as_contrastive_attacks_with_valid_presets(name, cls):
    assert ATTACKS.get(name) is cls
    assert cls.target == "contrastive"
    for preset in ("smoke", "demo", "cpu"):
        instance = cls.for_preset(preset)
        assert instance.threat_model().eps == pytest.approx(EPS)
