"""Evidence on CIFAR-10 (slow): EM, class-wise EM and REM make data unlearnable.

One grid through the runner (clean row + the three attacks, no defense), shared by the
assertions: each attack must take at least 10 points of clean test accuracy off the
clean row. Scaled to fit the CI budget: 4,000 protected images, 10 victim epochs and
crafting budgets below the ``cpu`` preset (see the numbers in the attack params).
"""
from __future__ import annotations

import pytest

from uebench.runner import RunSpec, run

ATTACKS = ["em", "em-classwise", "rem"]
OVERRIDES = {"n_protected": 4000, "epochs": 10}
ATTACK_PARAMS = {
    "em": {"max_rounds": 3},
    "em-classwise": {"max_rounds": 5},
    "rem": {"train_steps": 50},
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
