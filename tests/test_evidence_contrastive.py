"""Evidence on the CIFAR-10 subset (slow): class-wise contrastive poisoning (UCL) makes data
unlearnable for a SimCLR learner.

The cells are those of the committed `cpu` contrastive table (the ``evidence`` fixture with
``protocol=contrastive``: 8,000 protected images; a small-CNN SimCLR encoder trained for
the `cpu` preset's epochs, then a linear probe), recomputed. Published (ResNet-18, full
CIFAR-10, 1,000 SimCLR epochs): clean ≈ 91–92 %, class-wise UCL 68.0 %, sample-wise 44.9 %.
"""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def accuracies(evidence):
    cells = evidence(["ucl-classwise"], ["none"], overrides={"protocol": "contrastive"})
    return {attack: acc for (attack, defense), acc in cells.items() if defense == "none"}


def test_classwise_contrastive_poisoning_lowers_the_linear_probe(accuracies):
    clean, poisoned = accuracies["clean"], accuracies["ucl-classwise"]
    assert poisoned <= clean - 0.05, f"ucl-classwise: probe accuracy {poisoned:.3f} vs clean {clean:.3f}"
