"""ECLIPSE, sparse diffusion purification with a light corruption (defenses/eclipse.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FAST_DIFFUSION, tiny_images
from uebench.defenses.eclipse import ECLIPSE, matching_t_star, official_noise_level, pillow_grayscale
from uebench.defenses.iss import Grayscale


def test_t_star_matches_the_official_noise_level():
    """The official t* = 100 of improved diffusion's cosine 4,000-step schedule keeps ᾱ = 0.99751."""
    assert official_noise_level() == pytest.approx(0.997513, abs=1e-6)
    assert ECLIPSE().t_star == matching_t_star() == 11


def test_grayscale_is_pillows_and_agrees_with_iss_gray(ctx):
    x, _ = tiny_images(6)
    grey = pillow_grayscale(x)
    image = (x[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    expected = np.asarray(Image.fromarray(image).convert("L"))
    assert np.array_equal((grey[0, 0] * 255).round().to(torch.uint8).numpy(), expected)
    torch.testing.assert_close(grey, Grayscale().purify(x, None, None, ctx), atol=1e-6, rtol=0)


def test_the_compensation_corrupts_lightly_and_stays_in_uint8_levels():
    x, y = tiny_images(256)
    torch.manual_seed(0)
    out, labels = ECLIPSE().augment(x, y)
    assert torch.equal(labels, y) and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out * 255, (out * 255).round())                              # uint8 levels
    torch.manual_seed(0)
    grey_only, _ = ECLIPSE(noise_std=0.0).augment(x, y)                            # the grayscale part
    grey = (grey_only[:, 0] == grey_only[:, 1]).flatten(1).all(1) & (grey_only[:, 1] == grey_only[:, 2]).flatten(1).all(1)
    assert 0.3 < grey.float().mean() < 0.5                                          # p = 0.4
    noise_only, _ = ECLIPSE(grayscale_p=0.0).augment(x, y)                         # the noise part
    assert 0.045 < (noise_only - x).std() < 0.06                                    # std 0.05, plus truncation


def test_purification_noises_to_t_star_and_keeps_shape_range_and_uint8(tiny, reference, ctx):
    eclipse = ECLIPSE(**FAST_DIFFUSION)
    x, y = tiny
    out = eclipse.purify(x, y, reference, ctx)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out * 255, (out * 255).round())
    assert ctx.notes["schedule"]["timesteps"][0] == 11 and ctx.notes["schedule"]["timesteps"][-1] == 0
    with pytest.raises(ValueError):
        ECLIPSE(grayscale_p=1.5)
