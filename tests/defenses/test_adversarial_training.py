"""Adversarial training (defenses/adversarial_training.py)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_images
from uebench.defenses.adversarial_training import AdversarialTraining
from uebench.models import create_model
from uebench.train import TrainConfig, train_supervised


@pytest.fixture(scope="module")
def fitted_model():
    """A small CNN fitted to the tiny set (clean loss near 0), left in train mode."""
    x, y = tiny_images()
    cfg = TrainConfig(epochs=8, batch_size=16, flip=False, crop_pad=0)
    model = train_supervised(create_model("smallcnn", 3, 4), x, y, cfg, torch.device("cpu"), seed=0)
    model.zero_grad(set_to_none=True)
    return model.train()


def test_at_defaults_follow_the_papers():
    linf, l2 = AdversarialTraining(), AdversarialTraining(norm="l2")
    assert math.isclose(linf.eps, 8 / 255) and math.isclose(linf.step_size, 2 / 255) and linf.steps == 10
    assert math.isclose(l2.eps, 0.5) and math.isclose(l2.step_size, 0.125)
    with pytest.raises(ValueError):
        AdversarialTraining(norm="l1")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_at_inner_attack_raises_the_loss_and_stays_in_the_ball(norm, tiny, fitted_model):
    torch.manual_seed(0)
    x, y = tiny
    model = fitted_model
    defense = AdversarialTraining(norm=norm, steps=5)
    x_adv = defense.attack(model, x, y)
    assert model.training, "the model's mode must be restored"
    assert all(p.grad is None for p in model.parameters()), "the attack must not touch parameter gradients"
    delta = x_adv - x
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    if norm == "linf":
        assert delta.abs().max() <= defense.eps + 1e-6
    else:
        assert delta.flatten(1).norm(dim=1).max() <= defense.eps + 1e-5
    model.eval()
    try:
        with torch.no_grad():
            clean, adv = F.cross_entropy(model(x), y), F.cross_entropy(model(x_adv), y)
            noisy = F.cross_entropy(model((x + delta[torch.randperm(len(x))]).clamp(0, 1)), y)
    finally:
        model.train()
    assert adv > 10 * clean
    assert adv > 2 * noisy, "PGD must beat a perturbation of the same size in a random direction"
