"""class-shift-detect (defenses/class_shift_detect.py): the whitened class-mean shift."""
from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import make_ctx
from uebench.defenses.class_shift_detect import ClassShiftDetect


def smooth_images(n: int, classes: int, seed: int, size: int = 8):
    """Images whose pixels vary smoothly (an upsampled 2×2 grid plus a little texture), so that
    natural variance is large along smooth directions and small along sharp ones, as in photos."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 2, 2, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)
    x = (0.8 * x + 0.05 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)
    return x, torch.arange(n) % classes


def poisoned_half(x, y, pattern):
    mask = torch.zeros(len(x), dtype=torch.bool)
    mask[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[: len(x) // 2]] = True
    return torch.where(mask[:, None, None, None], (x + pattern[y]).clamp(0, 1), x), mask


def auroc(detector, x, y, reference, mask):
    scores = detector.score(x, y, reference, make_ctx(classes=4, shape=tuple(x.shape[1:])))
    assert scores.shape == (len(x),) and torch.isfinite(scores).all()
    return roc_auc_score(mask.numpy(), scores.numpy()), scores


def test_a_class_wise_pattern_below_the_images_own_variation_is_found():
    """A ±4/255 sharp pattern per class, far below the images' own spread: half the images carry it."""
    x, y = smooth_images(800, 4, seed=0)
    reference = smooth_images(400, 4, seed=1)
    pattern = torch.sign(torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))) * 4 / 255
    mixed, mask = poisoned_half(x, y, pattern)
    score, scores = auroc(ClassShiftDetect(), mixed, y, reference, mask)
    assert score > 0.95
    detector = ClassShiftDetect()
    flags = detector.flag(detector.score(mixed, y, reference, make_ctx(classes=4, shape=(3, 8, 8))))
    assert (flags == mask).float().mean() > 0.7
    assert flags[~mask].float().mean() < 0.2                   # the bound comes from clean images


def test_the_same_pattern_for_every_class_moves_no_class_apart_and_clean_data_scores_at_chance():
    x, y = smooth_images(800, 4, seed=0)
    reference = smooth_images(400, 4, seed=1)
    _, mask = poisoned_half(x, y, torch.zeros(4, 3, 8, 8))
    score, _ = auroc(ClassShiftDetect(), x, y, reference, mask)      # nothing poisoned: the mask is arbitrary
    assert abs(score - 0.5) < 0.06


def test_large_images_are_pooled_to_max_dim_and_bad_values_refused():
    detector = ClassShiftDetect(max_dim=48)
    assert detector.flat(torch.rand(2, 3, 16, 16)).shape == (2, 48)       # 768 → 192 → 48 values
    for bad in ({"ridge": 0}, {"quantile": 1.0}, {"max_dim": 0}):
        with pytest.raises(ValueError):
            ClassShiftDetect(**bad)


def test_sample_wise_noise_is_no_shared_pattern():
    """Sharp random noise per image, strong in the directions where clean images barely vary:
    scored against the other images' shift it is at chance (with the image in its own class mean,
    its own noise would count: 0.64 on these images)."""
    x, y = smooth_images(800, 4, seed=0)
    reference = smooth_images(400, 4, seed=1)
    noise = (torch.rand(800, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1) * 8 / 255
    mask = torch.zeros(800, dtype=torch.bool)
    mask[torch.randperm(800, generator=torch.Generator().manual_seed(1))[:400]] = True
    mixed = torch.where(mask[:, None, None, None], (x + noise).clamp(0, 1), x)
    score, _ = auroc(ClassShiftDetect(), mixed, y, reference, mask)
    assert abs(score - 0.5) < 0.07
