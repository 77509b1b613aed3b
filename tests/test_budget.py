"""The budget guard catches every kind of violation, with a useful one-line message,
and accepts poisons that use their budget exactly."""
from __future__ import annotations

import math

import pytest
import torch

from uebench.api import ThreatModel
from uebench.budget import BudgetViolation, check_budget, declared_threat_model
from uebench.registry import UserError

LEVEL = 1 / 255


@pytest.fixture
def clean():
    # Mid-grey images with texture, away from 0 and 1 so ± perturbations are not clipped.
    g = torch.Generator().manual_seed(0)
    return 0.25 + 0.5 * torch.rand(6, 3, 8, 8, generator=g)


def violation(clean, poisoned, threat) -> str:
    with pytest.raises(BudgetViolation) as info:
        check_budget(clean, poisoned, threat)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_budget_violation_is_a_user_error():
    assert issubclass(BudgetViolation, UserError)


def test_linf_exact_budget_passes_and_one_level_over_fails(clean):
    eps = 8 * LEVEL
    sign = torch.where(torch.rand(clean.shape, generator=torch.Generator().manual_seed(1)) < 0.5, -1.0, 1.0)
    check_budget(clean, clean + eps * sign, ThreatModel("linf", eps))
    poisoned = clean + eps * sign
    poisoned[4, 1, 2, 3] = clean[4, 1, 2, 3] + 9 * LEVEL
    message = violation(clean, poisoned, ThreatModel("linf", eps))
    assert "L∞" in message and "9/255" in message and "8/255" in message and "image 4" in message


def test_l2_exact_budget_passes_and_over_fails(clean):
    direction = torch.randn(clean.shape, generator=torch.Generator().manual_seed(2)) * 1e-2
    direction = direction / direction.flatten(1).norm(dim=1)[:, None, None, None]
    check_budget(clean, clean + 0.5 * direction, ThreatModel("l2", 0.5))
    poisoned = clean + 0.5 * direction
    poisoned[2] = clean[2] + 0.51 * direction[2]
    message = violation(clean, poisoned, ThreatModel("l2", 0.5))
    assert "L2" in message and "0.51" in message and "0.5" in message and "image 2" in message


def test_l0_counts_pixel_positions_not_channels(clean):
    poisoned = clean.clone()
    poisoned[:, :, 3, 5] = 1.0        # all three channels of one position: one pixel
    check_budget(clean, poisoned, ThreatModel("l0", 1))
    poisoned[3, 0, 0, 0] = 0.0        # a second position in image 3
    message = violation(clean, poisoned, ThreatModel("l0", 1))
    assert "L0" in message and "2 pixel" in message and "budget 1" in message and "image 3" in message


@pytest.mark.parametrize("value, word", [(1.02, "maximum"), (-0.02, "minimum")])
def test_out_of_range_values_fail_under_any_norm(clean, value, word):
    poisoned = clean.clone()
    poisoned[5, 2, 1, 1] = value
    message = violation(clean, poisoned, ThreatModel("none", 0.0))
    assert "[0, 1]" in message and word in message and "image 5" in message


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values_fail(clean, bad):
    poisoned = clean.clone()
    poisoned[1, 0, 4, 4] = bad
    message = violation(clean, poisoned, ThreatModel("linf", 1.0))
    assert "NaN" in message and "image 1" in message


def test_shape_mismatch_fails(clean):
    message = violation(clean, clean[:, :, :7], ThreatModel("linf", 8 * LEVEL))
    assert "(6, 3, 7, 8)" in message and "(6, 3, 8, 8)" in message


def test_worst_image_found_across_chunks():
    clean = torch.full((2100, 1, 2, 2), 0.5)    # more than one chunk of the guard
    poisoned = clean + 2 * LEVEL
    poisoned[2050] = clean[2050] + 3 * LEVEL
    message = violation(clean, poisoned, ThreatModel("linf", 2 * LEVEL))
    assert "image 2050" in message and "3/255" in message


def test_declared_threat_model_passes_the_image_shape_when_asked():
    class ScalesWithImage:
        def threat_model(self, image_shape=(3, 32, 32)):
            return ThreatModel("l2", math.prod(image_shape) ** 0.5)

    class Fixed:
        def threat_model(self):
            return ThreatModel("linf", 8 * LEVEL)

    assert declared_threat_model(ScalesWithImage(), (1, 8, 8)).eps == pytest.approx(8.0)
    assert declared_threat_model(Fixed(), (1, 8, 8)) == ThreatModel("linf", 8 * LEVEL)
