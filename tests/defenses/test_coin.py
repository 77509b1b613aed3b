"""COIN, random bilinear resampling against convolution-based UEs (defenses/coin.py).

The expected values are numbers from running the official code, not a re-implementation:
github.com/wxldragon/COIN at commit 6577fa8ce00476201f7efaf2ed2d194e742ebb64, ``train.py``,
``COIN_trans(image, severity)`` followed by the ``np.uint8`` of the transform's ``Lambda``. The
function was run as written, in a scratch folder outside the project, with numpy 2.4.6 and
``map_coordinates`` = ``scipy.ndimage.map_coordinates`` (scipy 1.17.1; ``train.py`` uses the
name without importing it), each image given as a PIL image, as the transform chain gives it.
``np.random.seed(seed)`` once, then one call per image in order; the two ``np.random.uniform``
draws of each call (dx first, dy second) were recorded as the official ``.astype(np.float32)``
makes them. ``tests/golden/coin_official.npz`` holds the draws and the uint8 outputs (its
``provenance`` entry repeats this; the CIFAR-10 case as the official output minus its input, so
no image of the shared subset is in the repository):

* ``cifar_sev4_seed0``: ``x_train[:4]`` of ``../shared/data/cifar10_subset.npz``, severity 4
  (α 2.0, the default), seed 0;
* ``synthetic_sev7_seed1``: ``RandomState(2025).randint(0, 256, (4, 16, 16, 3)).astype(uint8)``,
  severity 7 (α 3.2, the largest), seed 1;
* ``edge_*``: ``RandomState(7).randint(0, 256, (8, 8, 3)).astype(uint8)``, severity 4, the draws
  injected instead of drawn: dy = 0, dx = 0 except ``dx[3, 6] = float32(1.0000001)``.

uebench's draws come from torch, so the official draws are injected where its API takes them:
``coin_warp(x, dy, dx)``, the function ``COIN.augment`` applies to every batch (checked below).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_images
from uebench.data import to_tensor, to_uint8
from uebench.defenses.coin import COIN, SEVERITY_ALPHA, coin_warp

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "coin_official.npz"


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN)


def warp_with_official_draws(x_uint8: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """uebench's warp of uint8 NHWC images at the official (N, H, W) displacements, uint8 back."""
    out = coin_warp(to_tensor(x_uint8), torch.from_numpy(dy), torch.from_numpy(dx))
    return to_uint8(out)


def assert_within_one_level(ours: np.ndarray, theirs: np.ndarray, *, most: float):
    """Within one uint8 level, and at most a fraction ``most`` of the values off by one.

    The tolerance is float arithmetic at the truncation: the official code interpolates in
    float64 (scipy) and stores float32; uebench interpolates in float32, so a value on an exact
    level (all four neighbours 202, say) can come out one ulp below and truncate one level lower.
    Measured on 500 subset images with official draws: 0.047 % of the values at severity 4 (712
    one lower, 8 one higher), 0.042 % at severity 7; here 1 of 12 288 (CIFAR) and 0 of 3 072."""
    diff = ours.astype(int) - theirs.astype(int)
    assert np.abs(diff).max() <= 1, f"off by up to {np.abs(diff).max()} levels"
    assert (diff != 0).mean() <= most, f"{(diff != 0).mean():.4%} of the values off by one"


def test_the_warp_of_cifar_images_is_the_official_one(golden, cifar_subset):
    with np.load(cifar_subset) as data:
        x = data["x_train"][:4]
    ours = warp_with_official_draws(x, golden["cifar_sev4_seed0_dx"], golden["cifar_sev4_seed0_dy"])
    assert np.abs(golden["cifar_sev4_seed0_dx"]).max() <= SEVERITY_ALPHA[3]
    official = (x.astype(np.int16) + golden["cifar_sev4_seed0_minus_input"]).astype(np.uint8)
    assert_within_one_level(ours, official, most=2e-4)


def test_the_warp_at_the_largest_severity_is_the_official_one(golden):
    x = np.random.RandomState(2025).randint(0, 256, size=(4, 16, 16, 3)).astype(np.uint8)
    dx, dy = golden["synthetic_sev7_seed1_dx"], golden["synthetic_sev7_seed1_dy"]
    assert np.abs(dx).max() > 3.1 and np.abs(dy).max() <= SEVERITY_ALPHA[6]     # the wrap boundary is reached
    np.testing.assert_array_equal(warp_with_official_draws(x, dx, dy), golden["synthetic_sev7_seed1"])


def test_a_coordinate_just_past_the_last_column_is_a_known_difference(golden):
    """A known difference from the official code, reported, not fixed here (a change to
    defenses/coin.py would mark committed results stale). The official code adds the float32
    displacement to the integer grid in float64 (numpy promotes): 6 + float32(1.0000001) is
    7.00000012, past the last column of an 8-px row, and scipy's ``wrap`` takes it to ~1.2e-7,
    next to column 0. uebench forms the coordinate in float32, where the sum rounds to 7.0, the
    last column itself. Every other value agrees exactly; this one pixel gets column 7's colour
    instead of column 0's. On CIFAR (500 subset images, official severity-7 draws) it happened
    to 1 pixel in 512 000 (3 channel values, 45-48 levels off), at severity 4 to none.
    When coin_warp forms its coordinates in float64, the last assertion fails: then the whole
    image equals the official one and this test should say so."""
    x, theirs = golden["edge_x"], golden["edge_out"]
    ours = warp_with_official_draws(x[None], golden["edge_dx"][None], golden["edge_dy"][None])[0]
    assert np.float32(6) + golden["edge_dx"][3, 6] == 7.0 and np.float64(6) + golden["edge_dx"][3, 6] > 7.0
    np.testing.assert_array_equal(theirs[3, 6], x[3, 0])                     # official: wrapped to column 0
    same = np.ones((8, 8), dtype=bool)
    same[3, 6] = False
    np.testing.assert_array_equal(ours[same], theirs[same])
    np.testing.assert_array_equal(ours[3, 6], x[3, 7])                        # uebench: column 7


def test_augment_is_coin_warp_at_its_own_draws():
    """The path the trainer takes (``COIN.augment`` after crop and flip) is ``coin_warp`` at
    uniform displacements in [−α, α) with α scaled by H / 32 (2.0 px on 32-px images, as the
    official severity 4); replaying the trainer-seeded draws gives the same batch bit for bit."""
    x, y = tiny_images(8, size=32)
    x = (x * 255).round() / 255
    torch.manual_seed(0)
    out, labels = COIN().augment(x, y)
    torch.manual_seed(0)
    dy = (torch.rand(8, 32, 32) * 2 - 1) * 2.0
    dx = (torch.rand(8, 32, 32) * 2 - 1) * 2.0
    assert torch.equal(out, coin_warp(x, dy, dx)) and torch.equal(labels, y)


def test_zero_displacement_keeps_the_image_and_the_default_is_severity_4():
    x, y = tiny_images(8)
    x = (x * 255).round() / 255
    zero = torch.zeros(8, 16, 16)
    torch.testing.assert_close(coin_warp(x, zero, zero), x, atol=1e-6, rtol=0)
    assert COIN().alpha == SEVERITY_ALPHA[3] == 2.0
    assert SEVERITY_ALPHA == (0.8, 1.2, 1.6, 2.0, 2.4, 2.8, 3.2)             # the official list, severities 1..7


def test_augment_changes_images_within_range_keeps_labels_and_follows_the_seed():
    x, y = tiny_images(32)
    torch.manual_seed(0)
    out, labels = COIN().augment(x, y)
    assert out.shape == x.shape and torch.equal(labels, y) and not torch.equal(out, x)
    assert out.min() >= 0 and out.max() <= 1
    torch.manual_seed(0)
    again, _ = COIN().augment(x, y)
    assert torch.equal(out, again)                        # the trainer's seed fixes the draw
    with pytest.raises(ValueError, match="alpha"):
        COIN(alpha=-1)
