"""Pixel-level image operations several defenses share: uint8 round trips and JPEG."""
from __future__ import annotations

import torch
from torchvision.io import decode_jpeg, encode_jpeg


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats to uint8 pixels (rounded), contiguous NCHW."""
    return x.mul(255).round_().clamp_(0, 255).to(torch.uint8).contiguous()


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """A real JPEG round trip of a float batch at ``quality`` (libjpeg on the CPU, nvjpeg on CUDA).

    Uses torchvision.io's list API: one call encodes and one decodes the whole batch.
    1-channel images are coded as grayscale JPEGs.
    """
    encoded = encode_jpeg(list(to_uint8(x)), quality=quality)
    decoded = decode_jpeg(encoded, device=x.device)
    return torch.stack(decoded).to(x.dtype) / 255


def add_levels(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """``x`` plus a whole number of uint8 levels per value, clipped to [0, 1]: an official export that
    adds integer noise to uint8 images. A value of ``x`` on the uint8 grid lands exactly on the grid;
    one off the grid (images that were never uint8) keeps its offset, so the noise stays within its
    levels of the clean value."""
    base = x.double() * 255
    snapped = base.round()
    base = torch.where((base - snapped).abs() < 1e-3, snapped, base)
    return ((base + levels.double()).clamp(0, 255) / 255).float()
