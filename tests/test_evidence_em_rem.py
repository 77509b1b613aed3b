"""Evidence on CIFAR-10 (slow): EM, class-wise EM and REM make data unlearnable.

One grid through the runner (clean row + the three attacks, no defense), shared by the
assertions: each attack must take at least 10 points of clean test accuracy off the
clean row. Scaled to fit the CI budget: 4,000 protected images and 10 victim epochs;
EM and class-wise EM run their ``cpu`` preset with fewer rounds, REM its ``cpu`` preset
with 50 steps, 4 noise steps and one crop/flip draw per step.

Calibrated on 4,000 other images of the subset (same sizes, 1 thread): clean 63.3 %;
EM 25.0 % (3 rounds, surrogate at 97.7 %); class-wise EM 43.1 % (7 rounds to 100 %);
REM 43.8 % (50 steps).
"""
from __future__ import annotations

import pytest

from uebench.runner import RunSpec, run

ATTACKS = ["em", "em-classwise", "rem"]
OVERRIDES = {"n_protected": 4000, "epochs": 10}
ATTACK_PARAMS = {
    "em": {"max_rounds": 3},
    "em-classwise": {"max_rounds": 10},
    "rem": {"train_steps": 50, "steps": 4, "eot_samples": 1},
}
MIN_DROP = 0.10


@pytest.fixture(scope="module")
def shared_run():
    return {}


@pytest.fixture
def accuracies(cifar_subset, shared_run, tmp_path_factory):
    """Clean test accuracy per attack name, from one run shared by every test here."""
    if "records" not in shared_run:
        shared_run["records"] = run(RunSpec(
            attacks=ATTACKS, defenses=["none"], dataset=f"npz:{cifar_subset}", preset="cpu", seeds=[0],
            results_dir=tmp_path_factory.mktemp("em_rem_results"), overrides=dict(OVERRIDES),
            attack_params=ATTACK_PARAMS, jobs=1, progress=False))
    by_name = {}
    for r in shared_run["records"]:
        assert r["status"] == "ok", f"{r['attack']['name']}: {r.get('error')}"
        by_name[r["attack"]["name"]] = r["metrics"]["test_acc"]
    return by_name


@pytest.mark.slow
@pytest.mark.parametrize("attack", ATTACKS)
def test_makes_cifar_unlearnable(attack, accuracies):
    clean, poisoned = accuracies["clean"], accuracies[attack]
    assert poisoned <= clean - MIN_DROP, (
        f"{attack}: test accuracy {poisoned:.3f} vs clean {clean:.3f}; expected a drop of at least {MIN_DROP:.2f}")
