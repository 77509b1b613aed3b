"""Slow evidence on the CIFAR-10 subset: diffusion purification (LE, AVATAR) against
unlearnable examples.

Published (Jiang et al. 2023; re-run by BridgePure 2025): LE-JCDP brings EM-poisoned
CIFAR-10 from about 24 % back to about 91 %, above AVATAR's 88 %. The cells are those of
the committed `cpu` table (the ``evidence`` fixture: 8,000 protected images; the `cpu`
presets of LE and AVATAR: a tiny DDPM trained for 1,500 steps on the 2,000-image
reference split, strided reverse chains; 15 victim epochs of the small CNN), recomputed (or, in CI, read from a copy of results/; see conftest.py).
"Wins back at least half" means
acc(attack, le) − acc(attack, none) ≥ ½ · (acc(clean, none) − acc(attack, none)).

Measured (seed 0, committed table; clean 74.2 %), LE at the official per-image guidance
strength (its distances averaged over a batch of 500, ``guidance_batch``; see
defenses/le.py): clean under LE 71.9 %, under AVATAR 65.1 %; EM (the official export, released
as uint8 images since 2026-12-07) 21.4 → 70.3 with LE (49 of the 53 points back) and 65.0 with
AVATAR (as floats: 19.4 → 71.5 and 63.9; with the signed EM before 2026-12-01: 21.3 → 64.1 and 60.3); class-wise noise
(released as uint8 images since 2026-12-07) 57.8 → 67.2 with LE (9.4 of 16.4 points back) and 64.0 with AVATAR (as
floats: 56.0 → 67.5 and 63.7). All three claims hold at this scale. With 500 times the official strength
(``guidance_batch=1``, uebench's default before 2026-12) they did not in 2026-11: EM (the
signed export of then) 51.9 and class-wise noise 62.3 with LE, so LE lost to AVATAR on EM and
won back only a third of class-wise noise (on today's EM the strong pull gives 70.3; the side
runs under leaderboard/side-runs/le-strong, checked by the last test here); that guidance pulled the chain back towards x_ue and kept 44 % of EM's δ
and 92 % of class-wise noise (the linear share of δ that survives, measured on 250
protected images), against 32 % and 82 % unguided.

One diffusion model, trained once on the reference split, serves every LE and AVATAR
cell. Claims about an attack whose module is missing or broken are skipped with the reason.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_grids, skip_unless_available

pytestmark = pytest.mark.slow

GRIDS = [                       # (attacks, defenses): each attack under each defense and none
    (["classwise-noise", "em"], ["le"]),
    (["em"], ["avatar"]),
]

# LE at 500 times the official strength (-D le.guidance_batch=1) on three rows, run beside the
# table (a non-preset hyperparameter writes a column of its own): see leaderboard/side-runs/README.md
STRONG_PULL = Path(__file__).resolve().parents[1] / "leaderboard" / "side-runs" / "le-strong"


@pytest.fixture(scope="module")
def grid(evidence_records):
    """{(attack, defense): record} of the available attacks."""
    return run_grids(evidence_records, GRIDS)


def acc(grid, attack: str, defense: str) -> float:
    return grid[(attack, defense)].metrics.test_acc


@pytest.mark.parametrize("attack", ["classwise-noise", "em"])
def test_le_wins_back_at_least_half(grid, attack):
    skip_unless_available(attack)
    clean, poisoned, purified = acc(grid, "clean", "none"), acc(grid, attack, "none"), acc(grid, attack, "le")
    assert clean - poisoned >= 0.10, f"{attack} did not bite at this scale ({clean:.3f} → {poisoned:.3f})"
    assert purified - poisoned >= 0.5 * (clean - poisoned), \
        f"{attack}: clean {clean:.3f}, poisoned {poisoned:.3f}, after LE {purified:.3f}"


def test_le_beats_avatar_on_em(grid):
    skip_unless_available("em")
    assert acc(grid, "em", "le") > acc(grid, "em", "avatar"), \
        f"LE {acc(grid, 'em', 'le'):.3f} vs AVATAR {acc(grid, 'em', 'avatar'):.3f} on EM"


def test_one_diffusion_model_of_the_reference_split_serves_every_cell(grid):
    notes = [r.notes["defense"] for (a, d), r in grid.items() if d in ("le", "avatar")]
    assert len(notes) == 3
    assert len({n["diffusion"]["cache_key"] for n in notes}) == 1
    for n in notes:
        # trained on exactly the reference split (its content hash), never on protected or test images
        assert n["diffusion"]["train_fingerprint"] == n["diffusion"]["reference_fingerprint"]
        assert n["diffusion"]["n_train_images"] == 2000
        assert n["figure"] == "examples.png"
    le_notes = [r.notes["defense"] for (a, d), r in grid.items() if d == "le"]
    assert all(n["schedule"]["timesteps"] == [20, 15, 10, 5, 0] and "perceptual" in n for n in le_notes)


@pytest.mark.parametrize("attack", ["em", "em-classwise", "ops"])
def test_the_official_strength_keeps_no_more_of_the_poison_than_the_strong_pull(evidence_records, attack):
    """Measured: OPS 62.9 against 47.4 at the strong pull (2026-12-01); on the released poisons (2026-12-07), EM 70.3
    against 69.6 and class-wise EM 62.3 against 56.0."""
    skip_unless_available(attack)
    from uebench.records import read_record
    official = evidence_records([attack], ["le"])[(attack, "le")]
    paths = list(STRONG_PULL.glob(f"*/{official.table.id}/{attack}/le@*/seed0.json"))
    assert len(paths) == 1, f"expected one side-run record of {attack} under {STRONG_PULL}, found {paths}"
    path = paths[0]
    strong = read_record(path)
    assert strong is not None and strong.status == "ok", f"unreadable side-run record {path}"
    # the same poison and the same LE but for the strength: otherwise the comparison says nothing
    assert strong.attack == official.attack
    assert strong.defense.code == official.defense.code
    assert strong.defense.hparams == {**official.defense.hparams, "guidance_batch": 1}
    assert official.metrics.test_acc >= strong.metrics.test_acc, \
        f"{attack}: official strength {official.metrics.test_acc:.3f}, strong pull {strong.metrics.test_acc:.3f}"
