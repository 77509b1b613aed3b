"""Image shortcut squeezing and other pixel-level squeezes, applied once to the training set.

Each defense here is a fixed, deterministic per-image transform, so transforming the
whole training set once in ``purify`` equals transforming every epoch before crop and
flip (what ISS does). They work for both protocols and on 1- or 3-channel images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import kornia.filters
import torch
import torch.nn.functional as F

from uebench.api import Defense
from uebench.toolkit.images import jpeg, to_uint8


@dataclass
class _Squeeze(Defense):
    """Base: apply :meth:`squeeze` to the whole training set once, in chunks, on the CPU.

    The CPU keeps the purified set bit-identical on every device (nvjpeg and libjpeg
    differ slightly); chunks bound the memory of the median filter's unfolding.
    """

    chunk_size: ClassVar[int] = 1024

    def squeeze(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def purify(self, x, y, reference, ctx):
        ctx.notes["purify"] = f"{self.name}: {self.describe_squeeze()}, applied once to the training set"
        return torch.cat([self.squeeze(part) for part in x.cpu().split(self.chunk_size)])

    def describe_squeeze(self) -> str:
        return repr(self)


@dataclass
class Grayscale(_Squeeze):
    """ISS grayscale (Liu et al., ICML 2023): train on grayscale copies with 3 equal channels.

    Removes colour-based, low-frequency shortcuts (EM, REM, class-wise noise). As in ISS and
    APBench (torchvision's ``Grayscale(3)`` on PIL images), the image is first a uint8 image
    and its luma is Pillow's fixed-point ITU-R 601-2 conversion,
    (19595 R + 38470 G + 7471 B + 2^15) >> 16, so the output is uint8 too.
    1-channel images are already gray and pass unchanged.

    Defaults: none to set.
    Parity: exact against APBench's output (``tests/test_parity.py``).
    Deviations: none. (Float luma, torchvision's tensor path, differs by 1/255 on about half
    of the pixels.)
    """

    name = "iss-gray"
    paper = "Liu et al., Image Shortcut Squeezing: Countering Perturbative Availability Poisons, ICML"
    year = 2023

    def squeeze(self, x):
        if x.shape[1] == 1:
            return x
        r, g, b = to_uint8(x).int().unbind(1)
        luma = (19595 * r + 38470 * g + 7471 * b + 32768) >> 16        # Pillow's convert("L")
        return (luma.to(x.dtype) / 255)[:, None].expand(-1, x.shape[1], -1, -1).contiguous()

    def describe_squeeze(self):
        return "ITU-R 601-2 grayscale of the uint8 image (Pillow's fixed point), replicated to every channel"


@dataclass
class JPEG(_Squeeze):
    """ISS JPEG (Liu et al., ICML 2023): train on JPEG-compressed copies of the images.

    A real codec (libjpeg through torchvision.io) at low quality removes high-frequency
    shortcuts (TAP, SEP, AR) that grayscale keeps.

    Defaults: quality 10 (ISS, APBench).
    Deviations: images are rounded to uint8 before coding (ISS codes uint8 PIL images too).
    """

    name = "iss-jpeg"
    paper = "Liu et al., Image Shortcut Squeezing: Countering Perturbative Availability Poisons, ICML"
    year = 2023
    quality: int = 10

    def __post_init__(self):
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must lie in 1..100, got {self.quality}")

    def squeeze(self, x):
        return jpeg(x, self.quality)

    def describe_squeeze(self):
        return f"JPEG quality {self.quality} (libjpeg via torchvision.io)"


@dataclass
class BitDepthReduction(_Squeeze):
    """Bit-depth reduction (Xu et al., feature squeezing, NDSS 2018), as used by APBench and ISS.

    Posterize: every uint8 channel value keeps its top ``bits`` bits (torchvision's
    ``RandomPosterize(bits=2, p=1)`` in APBench), so 2 bits give the levels 0, 64, 128 and
    192: white becomes 192/255 and images darken by about 32/255 on average.

    Defaults: 2 bits (APBench).
    Parity: exact against APBench's output (``tests/test_parity.py``).
    Deviations: none. (Feature squeezing's paper rounds to evenly spaced levels 0/85/170/255
    instead; that variant is not the column APBench reports.)
    """

    name = "bdr"
    paper = "Xu et al., Feature Squeezing: Detecting Adversarial Examples, NDSS"
    year = 2018
    bits: int = 2

    def __post_init__(self):
        if not 1 <= self.bits <= 8:
            raise ValueError(f"bits must lie in 1..8, got {self.bits}")

    def squeeze(self, x):
        mask = 256 - 2 ** (8 - self.bits)                                   # 2 bits: 0b11000000
        return (to_uint8(x) & mask).to(x.dtype) / 255

    def describe_squeeze(self):
        return f"posterize to the top {self.bits} bits of each uint8 value"


@dataclass
class GaussianBlur(_Squeeze):
    """Gaussian smoothing (APBench's low-pass baseline), with kornia.filters.gaussian_blur2d.

    Defaults: kernel 3, σ 0.1 (APBench). Note that σ = 0.1 puts a weight of about e^-50 on
    the neighbours, so the default is almost the identity; this is why APBench's Gaussian
    column matches its no-defense column. Raise ``sigma`` for a real low-pass filter.
    Deviations: reflect padding at the border.
    """

    name = "gaussian"
    paper = "Gaussian smoothing baseline of APBench (Qin et al.), arXiv"
    year = 2023
    kernel_size: int = 3
    sigma: float = 0.1

    def __post_init__(self):
        if self.kernel_size < 1 or self.kernel_size % 2 == 0 or self.sigma <= 0:
            raise ValueError(f"need an odd kernel_size >= 1 and sigma > 0, got {self.kernel_size}, {self.sigma}")

    def squeeze(self, x):
        k, s = self.kernel_size, self.sigma
        return kornia.filters.gaussian_blur2d(x, (k, k), (s, s), border_type="reflect")

    def describe_squeeze(self):
        return f"Gaussian blur, kernel {self.kernel_size}, sigma {self.sigma:g}"


@dataclass
class MedianFilter(_Squeeze):
    """Median filtering (feature squeezing, Xu et al., NDSS 2018), with kornia.filters.median_blur.

    Removes isolated impulses (e.g. OPS's one-pixel shortcut) while keeping edges.

    Defaults: kernel 3.
    The border is replicated (as OpenCV's ``cv2.medianBlur``, which the APBench and ISS
    code use); kornia alone would pad with zeros and turn every corner pixel black.

    Deviations: none.
    """

    name = "median"
    paper = "Xu et al., Feature Squeezing: Detecting Adversarial Examples, NDSS"
    year = 2018
    kernel_size: int = 3

    def __post_init__(self):
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {self.kernel_size}")

    def squeeze(self, x):
        r = self.kernel_size // 2
        padded = F.pad(x, (r, r, r, r), mode="replicate")
        filtered = kornia.filters.median_blur(padded, (self.kernel_size, self.kernel_size))
        return filtered[..., r:padded.shape[-2] - r, r:padded.shape[-1] - r]

    def describe_squeeze(self):
        return f"median filter, kernel {self.kernel_size}"
