"""REM, robust error-minimising noise (attacks/rem.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from uebench.attacks.rem import REM


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
