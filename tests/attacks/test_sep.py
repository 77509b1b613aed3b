"""SEP, self-ensemble protection (attacks/sep.py)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from conftest import make_ctx
from uebench.attacks.sep import SEP, features_of
from uebench.train import train_supervised


def images(n=64, classes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 16, 16), generator=generator).float() / 255, torch.arange(n) % classes


def test_the_checkpoints_are_the_states_of_one_training_run_at_evenly_spaced_epochs():
    x, y = images()
    ctx = make_ctx()
    attack = SEP(epochs=4, checkpoints=2)
    models = attack.train_checkpoints(x, y, ctx)
    assert len(models) == 2
    first, last = (torch.cat([p.flatten() for p in m.state_dict().values() if p.is_floating_point()]) for m in models)
    assert not torch.equal(first, last)
    # the last checkpoint is the network that the same recipe trains to the end
    recipe = replace(ctx.train, epochs=4, lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4, schedule="multistep",
                     crop_fill="zeros", milestones=(2, 3))
    torch.manual_seed(ctx.seed)
    alone = train_supervised(ctx.make_model(), x, y, recipe, ctx.device, ctx.seed)
    for name, value in alone.state_dict().items():
        assert torch.equal(value, models[-1].state_dict()[name]), name


@pytest.mark.parametrize("variant", ["ce", "fa", "fa-vr"])
def test_each_variant_moves_images_towards_the_target_class_within_the_budget(variant):
    x, y = images()
    ctx = make_ctx()
    attack = SEP(epochs=3, checkpoints=2, iterations=4, msvrg=2, variant=variant, eps=8 / 255, step_size=2 / 255)
    models = attack.train_checkpoints(x, y, ctx)
    target = (y + 2) % 4                                     # (y + K/2) mod K
    poisoned = attack(x, y, make_ctx())
    assert (poisoned - x).abs().max() <= 8 / 255 + 1e-6 and (poisoned - x).abs().max() > 0
    assert torch.equal(poisoned * 255, (poisoned * 255).round())          # on the uint8 grid
    with torch.no_grad():
        before = sum(F.cross_entropy(m(x), target) for m in models)
        after = sum(F.cross_entropy(m(poisoned), target) for m in models)
    assert after < before


def test_the_inner_steps_use_the_last_checkpoints_centroids_as_the_official_code(monkeypatch):
    x, y = images(16)
    seen = []
    for own in (False, True):
        attack = SEP(epochs=2, checkpoints=2, iterations=1, msvrg=3, own_centroids=own)
        models = attack.train_checkpoints(x, y, make_ctx())
        centroids = [torch.full((4, 128), float(k)) for k in range(2)]
        calls = []
        real = attack.gradient
        monkeypatch.setattr(attack, "gradient", lambda m, v, t, c: calls.append((models.index(m), float(c[0, 0]))) or real(m, v, t, c))
        attack.craft(models, centroids, x, (y + 2) % 4, torch.Generator().manual_seed(0))
        outer, inner = calls[:2], calls[2:]
        assert outer == [(0, 0.0), (1, 1.0)] and len(inner) == 3
        seen.append(inner)
    assert all(c == 1.0 for _, c in seen[0])                 # official: always the last checkpoint's centroids
    assert all(c == float(k) for k, c in seen[1])            # own_centroids: the drawn checkpoint's


def test_features_are_the_input_of_the_last_linear_layer():
    x, _ = images(8)
    model = make_ctx().make_model().eval()
    with torch.no_grad():
        feats = features_of(model, x)
        assert torch.allclose(model.fc(feats), model(x), atol=1e-6)


def test_bad_hyperparameters_are_refused():
    for bad in (dict(variant="svre"), dict(checkpoints=0), dict(checkpoints=200), dict(msvrg=0)):
        with pytest.raises(ValueError):
            SEP(**bad)
