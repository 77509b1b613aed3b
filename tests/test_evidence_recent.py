"""Evidence on the CIFAR-10 subset (slow): the headline claims of the methods published since 2023.

One claim per new method, on the cells of the committed `cpu` table (the ``evidence`` fixture;
in CI read from a copy of results/, see conftest.py). "Wins back at least half" means
acc(attack, defense) − acc(attack, none) ≥ ½ · (acc(clean, none) − acc(attack, none)).

- CUDA (conv-blur; Sadasivan et al., CVPR 2023): class-wise blurs make data unlearnable, and the
  usual augmentations do not undo them.
- COIN (Li et al., AAAI 2025): random bilinear resampling corrupts convolution-based poisons, better
  than the other defenses (the paper compares eleven).
- AUE and AAP (Wang et al., NeurIPS 2024): one supervised optimisation makes the data unlearnable
  for a supervised and a contrastive learner at once.
- D-VAE (Yu et al., ICML 2024) and ECLIPSE (Wang et al., ESORICS 2024): purification, from the
  poisoned data alone (D-VAE) or from 2,000 clean images (ECLIPSE), removes the poison (D-VAE, on
  every supervised row) and wins back what EM takes (ECLIPSE).

Measured (seed 0, committed table; clean 74.2 %): conv-blur 27.3, under cutout / mixup / cutmix
25.2 / 31.9 / 30.1, under COIN 47.6 (clean under COIN 58.1; the best cheap defense, UEraser-Lite,
34.1); AUE 34.2 and AAP 34.0 without a defense; EM 21.4 → 68.6 under ECLIPSE (released as uint8, truncated); clean under D-VAE 49.9
with the official rate weights (at the `cpu` preset's small VAE the purification itself costs 24 points;
the other rows under D-VAE in `DVAE_ROWS`, `DVAE_MISSES` and, not yet recomputed, `DVAE_OUTDATED`);
contrastive protocol: clean 47.6, AAP 40.1, AUE 45.3.
A claim that does not hold at this scale is a strict expected failure with its numbers, so it turns
red the day it starts to hold.
"""
from __future__ import annotations

import pytest

from conftest import attack_unavailable, run_grids, skip_unless_available, won_back

pytestmark = pytest.mark.slow

CHEAP = ["cutout", "mixup", "cutmix", "bdr", "gaussian", "median", "iss-gray", "iss-jpeg", "ueraser-lite"]
# D-VAE on the supervised rows, with the official rate weights (0.01 in both stages): where the purified
# poisons train as well as purified clean data, within 3 points (measured 46.9–55.1 against clean under
# D-VAE 49.9), and where they do not (measured, %). DVAE_OUTDATED: rows whose D-VAE cell was made by the
# earlier D-VAE code (β = 0.5 in stage 2; † in the leaderboard) and is not recomputed yet; they are left out
# of the grid (CI would otherwise spend two hours on them) and their claims skip with that reason.
DVAE_ROWS = ["ar", "ops", "lsp", "em-classwise", "classwise-noise", "ntga", "random-noise", "tue", "rem", "em", "tap"]
DVAE_MISSES = {"aue": 46.2, "aap": 42.2, "conv-blur": 21.4}
DVAE_OUTDATED = ["ucl", "ucl-classwise"]
DVAE_CLEAN = 49.9


def outdated_reason(attack: str) -> str:
    return (f"{attack} under D-VAE was made by the earlier D-VAE code (stage-2 rate weight 0.5; † in the "
            f"leaderboard): recompute it with uebench run --preset cpu --attacks {attack} --defenses d-vae")


GRIDS = [                       # (attacks, defenses); the runner adds the clean row and "none"
    (["conv-blur"], CHEAP + ["coin"]),
    (["aue", "aap"], ["none"]),
    (["em"], ["eclipse"]),
    (DVAE_ROWS + list(DVAE_MISSES), ["d-vae"]),
]


@pytest.fixture(scope="module")
def acc(evidence):
    cells = run_grids(evidence, GRIDS)
    dvae_row = DVAE_ROWS[0] if "em" in DVAE_OUTDATED else "em"       # a recomputed row, beside clean
    for attack, defense in (("conv-blur", "coin"), (dvae_row, "d-vae")):   # with the defense's own cost on clean data
        if attack_unavailable(attack) is None:
            cells |= evidence(["clean", attack], [defense])
    return cells


@pytest.fixture(scope="module")
def contrastive_acc(evidence):
    return evidence(["aue", "aap"], ["none"], overrides={"protocol": "contrastive"})


@pytest.mark.parametrize("augmentation", ["cutout", "mixup", "cutmix"])
def test_conv_blur_survives_the_usual_augmentations(acc, augmentation):
    skip_unless_available("conv-blur")
    taken, back = won_back(acc, "conv-blur", augmentation)
    assert taken >= 0.25, f"conv-blur took only {taken:.3f}"
    assert back < taken / 2, f"{augmentation} won back {back:.3f} of the {taken:.3f} conv-blur took"


def test_coin_undoes_conv_blur_better_than_the_cheap_defenses(acc):
    """COIN's resampling costs clean data itself (a ceiling of acc(clean, coin)); against that
    ceiling it wins back at least half of what conv-blur takes, and more than any cheap defense."""
    skip_unless_available("conv-blur")
    ceiling = acc["clean", "coin"] - acc["conv-blur", "none"]
    back = acc["conv-blur", "coin"] - acc["conv-blur", "none"]
    assert back >= ceiling / 2, f"coin won back {back:.3f} of the {ceiling:.3f} its own ceiling allows"
    for defense in CHEAP:
        assert acc["conv-blur", "coin"] > acc["conv-blur", defense], (
            f"{defense} {acc['conv-blur', defense]:.3f} ≥ coin {acc['conv-blur', 'coin']:.3f} on conv-blur")


@pytest.mark.parametrize("attack", ["aue", "aap"])
def test_supervised_unlearnability(acc, attack):
    skip_unless_available(attack)
    assert acc[attack, "none"] <= acc["clean", "none"] - 0.25, (
        f"{attack}: {acc[attack, 'none']:.3f} vs clean {acc['clean', 'none']:.3f}")


@pytest.mark.parametrize("attack", [
    pytest.param("aue", marks=pytest.mark.xfail(strict=True, reason="not at CPU scale: the probe on AUE's poisons "
                                                "reaches 45.3 % against 47.6 % on clean data (2.3 points)")),
    "aap",
])
def test_contrastive_unlearnability(contrastive_acc, attack):
    """Measured (the contrastive `cpu` table: SimCLR on the small CNN, then a linear probe): clean 47.6,
    AAP 40.1, AUE 45.3; the contrastive poisons UCL and TUE take nothing at this scale (47.5–48.4)."""
    skip_unless_available(attack)
    clean, poisoned = contrastive_acc["clean", "none"], contrastive_acc[attack, "none"]
    assert poisoned <= clean - 0.05, f"{attack}: probe accuracy {poisoned:.3f} vs clean {clean:.3f}"


def test_eclipse_wins_back_half_of_em(acc):
    """Measured: EM 21.4 → 68.6 under ECLIPSE (clean 74.2; clean under ECLIPSE 73.1)."""
    skip_unless_available("em")
    taken, back = won_back(acc, "em", "eclipse")
    assert taken >= 0.25, f"em took only {taken:.3f}"
    assert back >= taken / 2, f"eclipse won back {back:.3f} of the {taken:.3f} em took"


@pytest.mark.parametrize("attack", DVAE_ROWS + [
    pytest.param(attack, marks=pytest.mark.xfail(strict=True, reason=(
        f"not at the cpu preset: {attack} under D-VAE {measured} against clean under D-VAE {DVAE_CLEAN}"
        + (" (a blur is no additive noise for the VAE to drop)" if attack == "conv-blur" else ""))))
    for attack, measured in DVAE_MISSES.items()] + [
    pytest.param(attack, marks=pytest.mark.skip(reason=outdated_reason(attack))) for attack in DVAE_OUTDATED])
def test_dvae_removes_the_poison(acc, attack):
    """Trained on the poisons alone, D-VAE leaves a poison's images as learnable as the clean images
    it purifies (within 3 points): measured, AR 48.9, OPS 46.9, LSP 51.0, NTGA 55.1 against clean 49.9."""
    skip_unless_available(attack)
    assert acc[attack, "d-vae"] >= acc["clean", "d-vae"] - 0.03, (
        f"{attack} under d-vae {acc[attack, 'd-vae']:.3f} vs clean under d-vae {acc['clean', 'd-vae']:.3f}")


def test_dvae_wins_back_half_of_em(acc):
    """Measured with the official rate weights, on the released EM: 21.4 → 50.9 under D-VAE, 29.5 of the
    52.8 points EM takes (clean under D-VAE 49.9: the purification's own cost caps what it can win back).
    With the earlier D-VAE code (stage-2 rate weight 0.5) it did not hold: 22.5 of 54.8."""
    skip_unless_available("em")
    if "em" in DVAE_OUTDATED:
        pytest.skip(outdated_reason("em"))
    taken, back = won_back(acc, "em", "d-vae")
    assert back >= taken / 2, f"d-vae won back {back:.3f} of the {taken:.3f} em took"
