"""Evidence (slow): the detection table and orthogonal projection on the CIFAR-10 subset (cpu preset).

What holds at this scale (leaderboard/ANALYSIS.md, "Detection"): every detector is at chance on the
clean row, which mixes clean with clean (a detector that saw the mask, or scored by position, would
not be); the bias-shifting noise test separates OPS images from clean ones (AUROC 0.93: a one-pixel
shortcut survives a constant shift of the pixels, the images do not); the training-free residual
detector sees the per-pixel class-wise noise of Huang et al.
(``grid=32``, high-frequency) above chance; and orthogonal projection wins back at least half of
what the table's (smooth) class-wise noise took. The training-free class-shift baseline (a matched
filter for a class's mean shift) finds every pattern that a class shares: the per-pixel class-wise
noise of Huang et al., LSP, OPS and class-wise EM at AUROC 0.998 or above, and the table's smooth
class-wise noise at 0.997 since it is released as uint8 images (2026-12-07): rounding a smooth
pattern to levels leaves a class-shared staircase of up to half a level, with edges where natural
images vary least, and the whitened filter finds that residual alone at 0.993 (measured with the
detector on the float pattern, its released images, and the residual; as floats the smooth pattern
scored 0.855: it lies in the frequencies where natural images vary most). The learned detectors
stay near chance on it (0.50–0.58).
"""
from __future__ import annotations

import pytest

from conftest import won_back

pytestmark = pytest.mark.slow

DETECTORS = ["simple-net-detect", "bias-shift-detect", "residual-detect", "class-shift-detect"]
DETECTION = {"overrides": {"protocol": "detection"}}


@pytest.fixture(scope="module")
def detection(evidence_records):
    records = evidence_records(["clean", "classwise-noise"], DETECTORS, **DETECTION)
    return {key: r.metrics.auroc for key, r in records.items()}


def test_every_detector_is_at_chance_on_clean_images(detection):
    for d in DETECTORS:
        assert 0.45 <= detection["clean", d] <= 0.55, (d, detection["clean", d])


def test_the_bias_shifting_test_separates_ops_images_from_clean_ones(evidence_records):
    records = evidence_records(["ops"], ["bias-shift-detect"], **DETECTION)
    assert records["ops", "bias-shift-detect"].metrics.auroc >= 0.9


def test_the_residual_detector_sees_per_pixel_class_wise_noise(evidence_records):
    records = evidence_records(["classwise-noise"], ["residual-detect"],
                               attack_params={"classwise-noise": {"grid": 32}}, **DETECTION)
    (auroc,) = [r.metrics.auroc for (attack, _), r in records.items() if attack.startswith("classwise-noise@")]
    assert auroc >= 0.58, auroc            # 0.626 measured; chance is 0.5 (one standard error: about 0.006)


def test_orthogonal_projection_wins_back_half_of_class_wise_noise(evidence):
    acc = evidence(["clean", "classwise-noise"], ["orthogonal-projection"])
    taken, regained = won_back(acc, "classwise-noise", "orthogonal-projection")
    assert taken >= 0.10 and regained >= taken / 2, acc


def test_the_class_shift_baseline_finds_what_a_class_shares(evidence_records):
    """Measured: the per-pixel class-wise noise 1.000, LSP 1.000, class-wise EM 1.000, OPS 0.998; the
    table's smooth class-wise noise, released as uint8 images, 0.997 (0.855 as floats): the issue's
    0.9 on class-wise noise holds."""
    records = evidence_records(["lsp", "ops", "em-classwise", "classwise-noise"], ["class-shift-detect"], **DETECTION)
    per_pixel = evidence_records(["classwise-noise"], ["class-shift-detect"],
                                 attack_params={"classwise-noise": {"grid": 32}}, **DETECTION)
    auroc = {attack: r.metrics.auroc for (attack, _), r in {**records, **per_pixel}.items()}
    for attack in ("lsp", "ops", "em-classwise"):
        assert auroc[attack] >= 0.99, (attack, auroc[attack])
    (grid32,) = [v for attack, v in auroc.items() if attack.startswith("classwise-noise@")]
    assert grid32 >= 0.99 and auroc["classwise-noise"] >= 0.9, auroc
