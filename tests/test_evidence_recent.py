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
  poisoned data alone (D-VAE) or from 2,000 clean images (ECLIPSE), wins back what EM takes.

The measured numbers are in each test's docstring; a claim that does not hold at this scale is a
strict expected failure with its numbers, so it turns red the day it starts to hold.
"""
from __future__ import annotations

import pytest

from conftest import run_grids, skip_unless_available

pytestmark = pytest.mark.slow

CHEAP = ["cutout", "mixup", "cutmix", "bdr", "gaussian", "median", "iss-gray", "iss-jpeg", "ueraser-lite"]
GRIDS = [                       # (attacks, defenses); the runner adds the clean row and "none"
    (["conv-blur"], CHEAP + ["coin"]),
    (["aue", "aap"], ["none"]),
    (["em"], ["d-vae", "eclipse"]),
]


@pytest.fixture(scope="module")
def acc(evidence):
    return run_grids(evidence, GRIDS) | evidence(["clean"], ["coin"])   # COIN's own cost on clean data


@pytest.fixture(scope="module")
def contrastive_acc(evidence):
    return evidence(["aue", "aap"], ["none"], overrides={"protocol": "contrastive"})


def won_back(acc, attack: str, defense: str) -> tuple[float, float]:
    taken = acc["clean", "none"] - acc[attack, "none"]
    return taken, acc[attack, defense] - acc[attack, "none"]


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


@pytest.mark.parametrize("attack", ["aue", "aap"])
def test_contrastive_unlearnability(contrastive_acc, attack):
    skip_unless_available(attack)
    clean, poisoned = contrastive_acc["clean", "none"], contrastive_acc[attack, "none"]
    assert poisoned <= clean - 0.05, f"{attack}: probe accuracy {poisoned:.3f} vs clean {clean:.3f}"


@pytest.mark.parametrize("defense", ["d-vae", "eclipse"])
def test_purification_wins_back_half_of_em(acc, defense):
    skip_unless_available("em")
    taken, back = won_back(acc, "em", defense)
    assert taken >= 0.25, f"em took only {taken:.3f}"
    assert back >= taken / 2, f"{defense} won back {back:.3f} of the {taken:.3f} em took"
