"""The contrastive protocol: SimCLR loss, augmentations, schedule, linear probe, contract."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn as nn

from conftest import tiny_images
from uebench.api import Defense
from uebench.toolkit.contrastive import (ContrastiveConfig, contrastive_config, contrastive_loss, fit_linear_probe,
                                         learning_rate, make_simclr, pretrain_simclr, simclr_augmentation, simclr_loss)

SMALL = dict(epochs=2, batch_size=32, probe_epochs=3)


def simplex(n: int) -> torch.Tensor:
    """n unit vectors with equal pairwise cosine −1/(n−1): the best-spread batch."""
    e = torch.eye(n)
    return e - e.mean(0)


def contrastive_ctx(ctx, **settings):
    return replace(ctx, protocol="contrastive", contrastive={**SMALL, **settings}, notes={})


# -- the loss -------------------------------------------------------------------------

def test_simclr_loss_reaches_its_theoretical_minimum_on_an_aligned_spread_batch():
    n, t = 8, 0.5
    z = simplex(n)
    minimum = math.log(1 + 2 * (n - 1) * math.exp(-(1 + 1 / (n - 1)) / t))
    assert simclr_loss(z, z, t).item() == pytest.approx(minimum, abs=1e-5)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):   # no batch of unit vectors does better
        z1 = torch.randn(n, n, generator=g)
        z2 = z1 + 0.1 * torch.randn(z1.shape, generator=g)
        assert simclr_loss(z1, z2, t).item() >= minimum - 1e-6


def test_simclr_loss_is_lower_for_identical_views_than_for_unrelated_views():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(32, 16, generator=g)
    other = torch.randn(32, 16, generator=g)
    same, unrelated = simclr_loss(z, z).item(), simclr_loss(z, other).item()
    assert same < unrelated - 1.0
    # unrelated views sit near chance: log(2N − 1)
    assert unrelated == pytest.approx(math.log(63), rel=0.15)


def test_simclr_loss_is_symmetric_in_the_views_and_invariant_to_scale():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    assert simclr_loss(z1, z2).item() == pytest.approx(simclr_loss(z2, z1).item(), abs=1e-5)
    assert simclr_loss(3 * z1, z2).item() == pytest.approx(simclr_loss(z1, z2).item(), abs=1e-5)


# -- augmentation and schedule ----------------------------------------------------------

@pytest.mark.parametrize("channels,size", [(3, 16), (1, 8), (3, 12)])
def test_augmentation_keeps_shape_and_range_and_passes_gradients(channels, size):
    augment = simclr_augmentation(channels, (size, size), ContrastiveConfig())
    x = torch.rand(10, channels, size, size, generator=torch.Generator().manual_seed(0), requires_grad=True)
    torch.manual_seed(0)
    views = augment(x)
    assert views.shape == x.shape
    assert views.min() >= -1e-6 and views.max() <= 1 + 1e-6
    views.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    torch.manual_seed(0)
    again = augment(x.detach())
    torch.manual_seed(1)
    other = augment(x.detach())
    assert torch.equal(views.detach(), again) and not torch.equal(again, other)


def test_learning_rate_warms_up_then_decays_to_the_floor():
    cfg = ContrastiveConfig(lr=0.5, warmup_from=0.01, min_lr_ratio=1e-3)
    total, warmup = 1000, 10
    lrs = [learning_rate(cfg, s, total, warmup) for s in range(total + 1)]
    assert lrs[0] == pytest.approx(0.01)
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup + 1]))       # rising during warm-up
    assert max(lrs) == pytest.approx(0.5, rel=1e-3)
    assert all(a >= b - 1e-12 for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))  # then never rising
    assert lrs[-1] == pytest.approx(0.5e-3)


# -- the linear probe ---------------------------------------------------------------------

class FixedFeatures(nn.Module):
    """A 'classifier' whose features are the flattened input: the probe alone must learn."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.features = nn.Flatten()
        self.fc = nn.Linear(dim, classes)

    def forward(self, x):
        return self.fc(self.features(x))


@pytest.mark.parametrize("scale", [1.0, 1e-3])
def test_linear_probe_separates_linearly_separable_features(ctx, scale):
    """High accuracy whatever the features' scale (the probe standardises them, then folds
    the standardisation into ``fc``, which is what this classifier's output uses)."""
    g = torch.Generator().manual_seed(0)
    classes, n, dim = 4, 400, 2 * 4 * 4
    y = torch.arange(n) % classes
    directions = torch.randn(classes, dim, generator=g)
    x = scale * (3 * directions[y] + torch.randn(n, dim, generator=g)).reshape(n, 2, 4, 4)
    cfg = ContrastiveConfig(probe_epochs=20, probe_batch_size=64, probe_lr=0.1, probe_augment=False)
    model = fit_linear_probe(FixedFeatures(dim, classes), x, y, cfg, ctx)
    accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.95
    assert not model.training


def test_simclr_pretraining_lowers_the_contrastive_loss(ctx):
    # random smooth images: distinct instances whose identity survives crops and jitter
    coarse = torch.rand(64, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    x = nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=True)
    cfg = ContrastiveConfig(epochs=8, batch_size=16, lr=0.05, base_temperature=0.5, warmup_epochs=0)
    _, model = make_simclr(ctx, None, cfg)
    augment = simclr_augmentation(3, (16, 16), cfg)

    def loss_now():
        torch.manual_seed(5)
        with torch.no_grad():
            return contrastive_loss(model.eval(), augment, x, cfg).item()

    before = loss_now()
    assert before == pytest.approx(math.log(127), abs=0.05)     # an untrained encoder is at chance
    pretrain_simclr(model, x, cfg, ctx)
    assert loss_now() < before - 0.2
    losses = ctx.notes["simclr_epoch_loss"]                   # recorded per epoch, for diagnosis
    assert len(losses) == 8 and losses[-1] < losses[0]


# -- the protocol's contract ---------------------------------------------------------------

def test_train_classifier_routes_to_the_contrastive_protocol(ctx, tiny):
    x, y = tiny
    c = contrastive_ctx(ctx)
    model = c.train_classifier(x, y)
    logits = model(x)
    assert logits.shape == (len(x), 4) and torch.isfinite(logits).all()
    assert not model.training
    assert c.notes["contrastive_protocol"]["epochs"] == 2
    assert c.notes["contrastive_protocol"]["arch"] == "smallcnn"
    again = contrastive_ctx(ctx).train_classifier(x, y)
    assert torch.equal(again(x), logits)      # seeded: the same cell gives the same classifier


def test_contrastive_protocol_on_one_channel_images_and_ten_classes(ctx):
    x, y = tiny_images(n=50, channels=1, size=8, classes=10)
    c = replace(contrastive_ctx(ctx, probe_augment=False), num_classes=10, image_shape=(1, 8, 8))
    model = c.train_classifier(x, y)
    assert model(x).shape == (50, 10)


def test_contrastive_protocol_labels_only_reach_the_probe(ctx, tiny):
    """SimCLR never sees labels: shuffling them leaves the encoder unchanged."""
    x, y = tiny
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    a = contrastive_ctx(ctx).train_classifier(x, y)
    b = contrastive_ctx(ctx).train_classifier(x, shuffled)
    assert torch.equal(a.features(x), b.features(x))
    assert not torch.equal(a(x), b(x))


@dataclass
class SupervisedOnly(Defense):
    name = "supervised-only"
    protocols = ("supervised",)


def test_a_supervised_only_defense_is_refused(ctx, tiny):
    x, y = tiny
    with pytest.raises(ValueError, match="contrastive"):
        contrastive_ctx(ctx).train_classifier(x, y, defense=SupervisedOnly())


def test_unknown_contrastive_setting_is_refused(ctx):
    with pytest.raises(ValueError, match="epoch"):
        contrastive_config(replace(ctx, contrastive={"epoch": 3}))
