"""Evidence on the CIFAR-10 subset (slow): class-wise contrastive poisoning (UCL) makes data
unlearnable for a SimCLR learner.

The cells are those of the committed `cpu` contrastive table (the ``evidence`` fixture with
``protocol=contrastive``: 8,000 protected images; a small-CNN SimCLR encoder trained for
the `cpu` preset's epochs, then a linear probe), recomputed (or, in CI, read from a copy of results/; see conftest.py). Published (ResNet-18, full
CIFAR-10, 1,000 SimCLR epochs): clean ≈ 91–92 %, class-wise UCL 68.0 %, sample-wise 44.9 %.

Not reproduced yet at this scale (issue 6 is blocked on a GPU run): measured (seed 0, committed table)
clean 47.6 %, ucl-classwise 47.5 % after 30 SimCLR epochs of the small CNN (the poison:
30 rounds of 10 encoder and 10 noise batches, 3.8 min; each cell 6.7 min). A longer
poisoning does not help at this scale: five times the rounds (``-A ucl-classwise.epochs=150``,
19.5 min) gave 50.1 %, above clean. The test is marked as a strict expected failure, so it
turns red the day the claim starts to hold and the mark must go.
"""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def accuracies(evidence):
    cells = evidence(["ucl-classwise"], ["none"], overrides={"protocol": "contrastive"})
    return {attack: acc for (attack, defense), acc in cells.items() if defense == "none"}


@pytest.mark.xfail(strict=True, reason="not reproduced at CPU scale yet: 47.5 % vs clean 47.6 % (see the docstring)")
def test_classwise_contrastive_poisoning_lowers_the_linear_probe(accuracies):
    clean, poisoned = accuracies["clean"], accuracies["ucl-classwise"]
    assert poisoned <= clean - 0.05, f"ucl-classwise: probe accuracy {poisoned:.3f} vs clean {clean:.3f}"
