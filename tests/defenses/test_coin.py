"""COIN, random bilinear resampling against convolution-based UEs (defenses/coin.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates

from conftest import tiny_images
from uebench.defenses.coin import COIN, SEVERITY_ALPHA, coin_warp


def official_warp(image: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """The official COIN_trans for one H×W×C uint8 image, its displacements given instead of drawn."""
    image = image.astype(np.float32) / 255.0
    shape = image.shape
    x, y, z = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    indices = (np.reshape(y + dy[..., None], (-1, 1)), np.reshape(x + dx[..., None], (-1, 1)), np.reshape(z, (-1, 1)))
    warped = np.clip(map_coordinates(image, indices, order=1, mode="wrap").reshape(shape), 0, 1) * 255
    return np.uint8(warped)


@pytest.mark.parametrize("alpha", [2.0, 3.2])
def test_the_warp_is_the_official_map_coordinates_boundary_included(alpha):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(6, 3, 16, 16, generator=g) * 255).floor() / 255
    dy = (torch.rand(6, 16, 16, generator=g) * 2 - 1) * alpha
    dx = (torch.rand(6, 16, 16, generator=g) * 2 - 1) * alpha
    ours = (coin_warp(x, dy, dx) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i in range(len(x)):
        image = (x[i] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        theirs = official_warp(image, dx[i].numpy(), dy[i].numpy())
        assert np.abs(ours[i].astype(int) - theirs.astype(int)).max() <= 1        # float32 sums: a truncation may flip
        assert (ours[i] == theirs).mean() > 0.99


def test_zero_displacement_keeps_the_image_and_the_default_is_severity_4():
    x, y = tiny_images(8)
    x = (x * 255).round() / 255
    zero = torch.zeros(8, 16, 16)
    torch.testing.assert_close(coin_warp(x, zero, zero), x, atol=1e-6, rtol=0)
    assert COIN().alpha == SEVERITY_ALPHA[3] == 2.0


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
