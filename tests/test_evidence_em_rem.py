"""Evidence on CIFAR-10 (slow): EM, class-wise EM and REM make data unlearnable.

One grid through the runner (clean row + the three attacks, no defense) on the shared
evidence table (the ``evidence`` fixture: 4,000 protected images, 10 victim epochs),
reused by every assertion: each attack must take at least 10 points of clean test
accuracy off the clean row. EM and class-wise EM run their ``cpu`` preset with fewer
rounds, REM its ``cpu`` preset with 50 steps, 4 noise steps and one crop/flip draw each.

Calibrated on 4,000 other images of the subset (same sizes, 1 thread): clean 63.3 %;
EM 25.0 % (3 rounds, surrogate at 97.7 %); class-wise EM 43.1 % (7 rounds to 100 %);
REM 43.8 % (50 steps).
"""
from __future__ import annotations

import pytest

ATTACKS = ["em", "em-classwise", "rem"]
ATTACK_PARAMS = {
    "em": {"max_rounds": 3},
    "em-classwise": {"max_rounds": 10},
    "rem": {"train_steps": 50, "steps": 4, "eot_samples": 1},
}
MIN_DROP = 0.10


@pytest.fixture(scope="module")
def accuracies(evidence):
    """Clean test accuracy per attack name (and "clean"), from one shared grid."""
    table = evidence(ATTACKS, ["none"], attack_params=ATTACK_PARAMS)
    # folders are "name" or "name@<hash of the hyperparameters>"
    return {attack.split("@")[0]: acc for (attack, defense), acc in table.items() if defense == "none"}


@pytest.mark.slow
@pytest.mark.parametrize("attack", ATTACKS)
def test_makes_cifar_unlearnable(attack, accuracies):
    clean, poisoned = accuracies["clean"], accuracies[attack]
    assert poisoned <= clean - MIN_DROP, (
        f"{attack}: test accuracy {poisoned:.3f} vs clean {clean:.3f}; expected a drop of at least {MIN_DROP:.2f}")
