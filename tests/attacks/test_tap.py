"""TAP, adversarial poisoning (attacks/tap.py), and what TAP and NTGA share."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import uebench.toolkit.surrogate as surrogate_module
from conftest import tiny_images
from uebench.attacks.ntga import NTGA
from uebench.attacks.tap import TAP
from uebench.toolkit.surrogate import trained_surrogate

EPS = 8 / 255


ATTACKS = {
    "tap": lambda: TAP.for_preset("smoke"),
    "tap-untargeted": lambda: TAP.for_preset("smoke", targeted=False),
    "ntga-fnn": lambda: NTGA.for_preset("smoke"),
    "ntga-cnn": lambda: NTGA.for_preset("smoke", surrogate="cnn"),
    "ntga-fgsm": lambda: NTGA.for_preset("smoke", official_fgsm=True),
}


def target_hit_rate(model, images, targets):
    with torch.no_grad():
        return (model(images).argmax(1) == targets).float().mean().item()


@pytest.fixture
def tap_data(ctx):
    """128 tiny images and a trainer setting on which the surrogate reaches 100 % accuracy."""
    x, y = tiny_images(n=128)
    return x, y, replace(ctx, train=replace(ctx.train, batch_size=16))


def tap_against_surrogate(x, y, ctx, **params):
    attack = TAP(steps=10, restarts=1, surrogate_epochs=5, batch_size=128, **params)
    out = attack(x, y, ctx)
    return out, trained_surrogate(x, y, ctx, epochs=5)      # the same network, from the cache


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("channels, size, classes", [(3, 16, 4), (1, 8, 3)])
def test_budget_and_range_are_respected(name, channels, size, classes, ctx):
    x, y = tiny_images(n=48, channels=channels, size=size, classes=classes)
    ctx = replace(ctx, num_classes=classes, image_shape=(channels, size, size))
    out = ATTACKS[name]()(x, y, ctx)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert (out - x).abs().max() <= EPS + 1e-6
    assert out.min() >= 0 and out.max() <= 1
    assert (out - x).abs().max() > EPS / 2           # it did perturb


@pytest.mark.parametrize("name", ["tap", "ntga-fnn", "ntga-cnn"])
def test_same_seed_same_poison_other_seed_other_poison(name, tiny, ctx, tmp_path):
    x, y = tiny
    first = ATTACKS[name]()(x, y, ctx)
    again = ATTACKS[name]()(x, y, replace(ctx, cache_dir=tmp_path / "other-cache", notes={}))
    other = ATTACKS[name]()(x, y, replace(ctx, seed=1, notes={}))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_surrogate_is_cached_and_reused(tiny, ctx, monkeypatch):
    x, y = tiny
    model = trained_surrogate(x, y, ctx, epochs=2)
    assert 0 <= ctx.notes["surrogate"]["clean_train_acc"] <= 1

    def no_training(*args, **kwargs):
        raise AssertionError("the cached surrogate should have been reused")

    monkeypatch.setattr(surrogate_module, "train_supervised", no_training)
    again = trained_surrogate(x, y, ctx, epochs=2)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in again.parameters()) and not again.training
    with pytest.raises(AssertionError, match="reused"):        # other epochs: another entry
        trained_surrogate(x, y, ctx, epochs=3)
    with pytest.raises(AssertionError, match="reused"):        # other images: another entry
        trained_surrogate(x.flip(0), y.flip(0), ctx, epochs=2)


def test_tap_moves_surrogate_predictions_to_the_next_class(tap_data):
    x, y, ctx = tap_data
    targets = (y + 1) % ctx.num_classes
    out, surrogate = tap_against_surrogate(x, y, ctx, step_size=2 / 255)
    with torch.no_grad():   # at ε = 8/255 the confident surrogate moves towards the target class
        clean_loss = F.cross_entropy(surrogate(x), targets).item()
        poisoned_loss = F.cross_entropy(surrogate(out), targets).item()
    assert poisoned_loss < clean_loss - 0.5, (clean_loss, poisoned_loss)
    # with a larger budget it crosses over: the target class becomes the prediction
    out, surrogate = tap_against_surrogate(x, y, ctx, eps=32 / 255, step_size=6 / 255)
    clean, poisoned = target_hit_rate(surrogate, x, targets), target_hit_rate(surrogate, out, targets)
    assert poisoned >= clean + 0.3, (clean, poisoned)
    assert ctx.notes["tap_surrogate_hit_poisoned"] == pytest.approx(poisoned, abs=1e-3)


def test_untargeted_tap_raises_surrogate_error(tap_data):
    x, y, ctx = tap_data
    out, surrogate = tap_against_surrogate(x, y, ctx, step_size=2 / 255, targeted=False)
    with torch.no_grad():
        clean_err = (surrogate(x).argmax(1) != y).float().mean().item()
        poisoned_err = (surrogate(out).argmax(1) != y).float().mean().item()
    assert poisoned_err >= clean_err + 0.2, (clean_err, poisoned_err)


def test_more_restarts_never_raise_the_per_image_loss(tiny, ctx):
    """Restarts keep each image's lowest-loss δ, so the first restart's result is a candidate."""
    x, y = tiny
    losses = []
    for restarts in (1, 3):
        out = TAP(steps=3, restarts=restarts, step_size=1 / 255, surrogate_epochs=2, batch_size=64)(x, y, ctx)
        surrogate = trained_surrogate(x, y, ctx, epochs=2)
        with torch.no_grad():
            losses.append(F.cross_entropy(surrogate(out), (y + 1) % 4, reduction="none"))
    assert (losses[1] <= losses[0] + 1e-5).all()
    assert ctx.notes["tap_restarts"] == 3
