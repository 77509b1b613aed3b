"""SEM, stable error-minimising noise (attacks/sem.py): REM with a random inner step."""
from __future__ import annotations

import torch

import uebench.attacks.rem as rem_module
from conftest import make_ctx
from uebench.attacks.rem import REM
from uebench.attacks.sem import SEM

SMALL = dict(train_steps=3, batch_size=16, steps=2, step_size=2 / 255, adv_steps=2, adv_step_size=2 / 255, eot_samples=2)


def count_pgd(monkeypatch) -> list:
    calls = []
    real = rem_module.pgd

    def counted(*args, **kwargs):
        calls.append(kwargs.get("steps"))
        return real(*args, **kwargs)
    monkeypatch.setattr(rem_module, "pgd", counted)
    return calls


def test_the_noise_step_draws_its_inner_perturbation_instead_of_ascending(tiny, trained_model, monkeypatch):
    x, y = tiny
    calls = count_pgd(monkeypatch)
    SEM(**SMALL).robust_noise(trained_model, x, y, pad=1, generator=torch.Generator().manual_seed(0))
    assert calls == []                                   # SEM: no PGD inside the noise's step
    REM(**SMALL).robust_noise(trained_model, x, y, pad=1, generator=torch.Generator().manual_seed(0))
    assert calls == [2, 2]                               # REM: one ascent per descent step


def test_the_random_inner_draw_stays_in_its_ball_and_the_image_range(tiny, trained_model):
    x, y = tiny
    attack = SEM()
    attack._crafting_noise = True
    draw = attack.adversary(trained_model, x, y, torch.Generator().manual_seed(0))
    assert draw.abs().max() <= attack.adv_eps + 1e-7 and draw.abs().max() > attack.adv_eps / 2
    assert (x + draw).min() >= 0 and (x + draw).max() <= 1
    again = attack.adversary(trained_model, x, y, torch.Generator().manual_seed(0))
    assert torch.equal(draw, again)                      # seeded
    attack._crafting_noise = False                       # the surrogate's training: REM's PGD ascent
    assert not torch.equal(attack.adversary(trained_model, x, y, torch.Generator().manual_seed(0)), draw)


def test_the_surrogate_is_still_adversarially_trained(monkeypatch):
    x = torch.randint(0, 256, (32, 3, 16, 16)).float() / 255
    y = torch.arange(32) % 4
    calls = count_pgd(monkeypatch)
    SEM(**SMALL).generate(x, y, make_ctx())
    assert calls == [2, 2, 2]                            # one PGD ascent per surrogate step, none in the noise


def test_the_poison_is_exported_on_the_uint8_grid_within_the_budget():
    x = torch.randint(0, 256, (32, 3, 16, 16)).float() / 255
    y = torch.arange(32) % 4
    attack = SEM(**SMALL)
    poisoned = attack(x, y, make_ctx())
    levels = poisoned * 255
    assert torch.equal(levels, levels.round())           # integer pixel levels, as the official int8 export
    assert (levels - x * 255).abs().max() <= 8 + 1e-4 and (poisoned - x).abs().max() > 0
