"""Evidence (slow): the detection table and orthogonal projection on the CIFAR-10 subset (cpu preset).

On images the project has never seen, at least one detector tells class-wise-noise images from
clean ones (AUROC >= 0.9); on the clean row, which mixes clean with clean, every detector is at
chance; and orthogonal projection wins back at least half of what class-wise noise took.
"""
from __future__ import annotations

import pytest

from conftest import won_back

pytestmark = pytest.mark.slow

DETECTORS = ["simple-net-detect", "bias-shift-detect", "residual-detect"]


@pytest.fixture(scope="module")
def detection(evidence_records):
    records = evidence_records(["clean", "classwise-noise"], DETECTORS, overrides={"protocol": "detection"})
    return {key: r.metrics.auroc for key, r in records.items()}


def test_a_detector_separates_class_wise_noise_from_clean_images(detection):
    best = max(detection["classwise-noise", d] for d in DETECTORS)
    assert best >= 0.9, {d: detection["classwise-noise", d] for d in DETECTORS}


def test_every_detector_is_at_chance_on_clean_images(detection):
    for d in DETECTORS:
        assert 0.4 <= detection["clean", d] <= 0.6, (d, detection["clean", d])


def test_orthogonal_projection_wins_back_half_of_class_wise_noise(evidence):
    acc = evidence(["clean", "classwise-noise"], ["orthogonal-projection"])
    taken, regained = won_back(acc, "classwise-noise", "orthogonal-projection")
    assert taken >= 0.10 and regained >= taken / 2, acc
