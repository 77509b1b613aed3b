"""Image shortcut squeezing and the other pixel squeezes (defenses/iss.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_images
from uebench.defenses.iss import JPEG, BitDepthReduction, GaussianBlur, Grayscale, MedianFilter


def impulse(size: int = 9, background: float = 0.0, value: float = 1.0) -> torch.Tensor:
    x = torch.full((1, 3, size, size), background)
    x[..., size // 2, size // 2] = value
    return x


def test_grayscale_is_pillows_fixed_point_luma_of_the_uint8_image():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = Grayscale().squeeze(x)
    assert out.shape == x.shape
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    pixels = (x * 255).round()
    luma = torch.floor((19595 * pixels[:, 0] + 38470 * pixels[:, 1] + 7471 * pixels[:, 2] + 32768) / 65536)
    assert torch.equal((out[:, 0] * 255).round(), luma)
    gray = torch.rand(4, 1, 8, 8)
    assert torch.equal(Grayscale().squeeze(gray), gray)


def test_jpeg_changes_images_within_shape_and_range(tiny):
    x, _ = tiny
    out = JPEG().squeeze(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert (out - x).abs().mean() > 2 / 255, "quality 10 must visibly change the images"
    gray = x[:, :1]
    gray_out = JPEG().squeeze(gray)
    assert gray_out.shape == gray.shape and (gray_out - gray).abs().mean() > 2 / 255


def test_jpeg_removes_high_frequency_noise_but_not_low_frequency_noise():
    """ISS's reading: JPEG erases per-pixel (high-frequency) shortcuts, not smooth ones."""
    x, _ = tiny_images(size=32)
    g = torch.Generator().manual_seed(1)
    per_pixel = (torch.randint(0, 2, x.shape, generator=g) * 2 - 1) * 8 / 255
    smooth = F.interpolate(torch.rand(len(x), 3, 4, 4, generator=g) * 2 - 1, size=(32, 32),
                           mode="bilinear", align_corners=True) * 8 / 255
    clean = JPEG().squeeze(x)

    def survival(noise):
        return ((JPEG().squeeze((x + noise).clamp(0, 1)) - clean).norm() / noise.norm()).item()

    assert survival(per_pixel) < 0.6
    assert survival(per_pixel) < 0.5 * survival(smooth)


def test_bit_depth_reduction_posterizes_to_the_top_two_bits():
    """APBench's RandomPosterize(bits=2): 0/64/128/192, never rounding up (white becomes 192)."""
    x = torch.arange(256, dtype=torch.float32).div(255).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    out = (BitDepthReduction().squeeze(x) * 255).round()
    assert out.unique().tolist() == [0, 64, 128, 192]
    assert torch.equal(out, torch.div(x * 255, 64, rounding_mode="floor").round() * 64)
    assert (out <= (x * 255).round()).all()


def test_median_filter_replicates_the_border_as_opencv():
    """cv2.medianBlur (ISS) repeats the edge pixels; reflecting would give 0 in this corner."""
    x = torch.zeros(1, 3, 5, 5)
    x[..., 0, :2] = 1.0                  # a bright top edge at the left corner
    assert MedianFilter().squeeze(x)[0, 0, 0, 0] == 1.0


def test_median_filter_removes_an_isolated_impulse_and_keeps_flat_images():
    assert torch.equal(MedianFilter().squeeze(impulse()), torch.zeros(1, 3, 9, 9))
    assert torch.allclose(MedianFilter().squeeze(impulse(background=0.4)), torch.full((1, 3, 9, 9), 0.4))
    flat = torch.full((2, 3, 8, 8), 0.7)
    assert torch.equal(MedianFilter().squeeze(flat), flat), "corners must not turn black"
    edge = torch.zeros(1, 1, 8, 8)
    edge[..., 4:] = 1
    assert torch.equal(MedianFilter().squeeze(edge), edge), "a median keeps a straight edge"


def test_gaussian_blur_spreads_an_impulse_as_its_kernel_and_is_near_identity_at_sigma_0_1():
    x = impulse()
    out = GaussianBlur(sigma=1.0).squeeze(x)
    centre = out[0, 0, 3:6, 3:6]
    g = torch.exp(-torch.tensor([1.0, 0.0, 1.0]) ** 2 / 2)
    kernel = torch.outer(g, g) / torch.outer(g, g).sum()
    assert torch.allclose(centre, kernel, atol=1e-5)
    assert torch.allclose(out.sum(), x.sum(), atol=1e-4), "blurring conserves the total intensity"
    assert torch.allclose(GaussianBlur().squeeze(x), x, atol=1e-6), "APBench's σ 0.1 is nearly the identity"


@pytest.mark.parametrize("defense", [Grayscale(), JPEG(), BitDepthReduction(), GaussianBlur(), MedianFilter()],
                         ids=lambda d: d.name)
def test_purify_applies_the_squeeze_in_chunks_and_notes_it(defense, tiny, ctx, monkeypatch):
    x, y = tiny
    monkeypatch.setattr(type(defense), "chunk_size", 5)
    out = defense.purify(x, y, (x, y), ctx)
    assert torch.allclose(out, defense.squeeze(x), atol=1e-6)
    assert defense.name in ctx.notes["purify"]
