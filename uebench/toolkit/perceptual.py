"""Perceptual distances for LE's guidance: LPIPS-AlexNet when it can be loaded, else an
offline LPIPS-style distance over a classifier trained on the clean reference split.

Both take two batches of images in [-1, 1] (LPIPS's convention) and return one distance
per image, shape (N,), differentiable with respect to the inputs.

LPIPS (Zhang et al., CVPR 2018) needs the ``lpips`` package (optional extra
``uebench[lpips]``, which ships its linear heads) and torchvision's ImageNet AlexNet
weights in the torch hub cache; on a machine without network access that download
fails. The stand-in follows the same recipe with the features of a small classifier
trained on the reference split (cached): unit-normalise each layer's features over
channels, square the differences, sum over channels, average over positions, sum over
layers (LPIPS with all linear weights equal to one), times a scale set once so that its
gradient is as strong as the pixel MSE's on the reference images (see ``calibrate``).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from uebench.models import create_model
from uebench.storage import tensor_fingerprint
from uebench.train import train_supervised

if TYPE_CHECKING:
    from uebench.context import Context

KINDS = ("auto", "lpips", "reference")


def lpips_unavailable(image_size: int = 32) -> str | None:
    """Why LPIPS-AlexNet cannot be used here (offline, on images of ``image_size`` px), or None."""
    if image_size < 32:   # AlexNet's stride-4 stem and pools leave nothing of smaller images
        return f"{image_size}-px images are too small for AlexNet (32 px at least)"
    try:
        import lpips  # noqa: F401
    except ImportError:
        return "the lpips package is not installed (pip install 'uebench[lpips]')"
    from torchvision.models import AlexNet_Weights
    weights = Path(torch.hub.get_dir()) / "checkpoints" / AlexNet_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    if not weights.exists():
        return f"the AlexNet ImageNet weights are not in the torch hub cache ({weights})"
    return None


class LPIPSDistance(nn.Module):
    """LPIPS with the AlexNet backbone and the published linear heads (v0.1)."""

    def __init__(self):
        super().__init__()
        import lpips
        self.net = lpips.LPIPS(net="alex", verbose=False).eval().requires_grad_(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape[1] == 1:   # grey images: AlexNet takes RGB
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
        return self.net(a, b).flatten()


class FeatureDistance(nn.Module):
    """LPIPS-style distance over the ``features`` of a uebench classifier.

    The layers compared are the outputs of the children of ``model.features`` that hold a
    convolution (for the small CNN: its four conv-BN-ReLU blocks).
    """

    def __init__(self, model: nn.Module, scale: float = 1.0):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.scale = scale

    def calibrate(self, images: torch.Tensor, noise_std: float = 0.1, seed: int = 0) -> float:
        """Set ``scale`` so that the mean gradient norm (w.r.t. the first argument) equals the
        per-image pixel MSE's, between ``images`` ([-1, 1]) and a seeded noisy copy.

        Why: LPIPS's learned linear weights fix its scale, and LE's guidance scale was set for
        it; with unit weights the raw stand-in pulled about 40 times harder than the pixel
        MSE on CIFAR-10 and LE's late, perceptual steps painted high-frequency patterns into
        every image (PSNR 13 dB; clean-row accuracy 74 % → 45 %). Matched to the MSE, the
        guidance is as strong on both sides of the switch (PSNR 32 dB, like MSE guidance).
        """
        g = torch.Generator().manual_seed(seed)
        a = images.detach()
        b = (a + noise_std * torch.randn(a.shape, generator=g).to(a.device)).clamp(-1, 1)

        def grad_norm(distance) -> float:
            x = a.clone().requires_grad_(True)
            grad, = torch.autograd.grad(distance(x, b).sum(), x)
            return grad.flatten(1).norm(dim=1).mean().item()

        self.scale = 1.0
        self.scale = grad_norm(lambda u, v: (u - v).pow(2).flatten(1).mean(1)) / max(grad_norm(self), 1e-12)
        return self.scale

    def layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for block in self.model.features.children():
            x = block(x)
            if x.ndim == 4 and any(isinstance(m, nn.Conv2d) for m in block.modules()):
                taps.append(x)
        return taps

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        both = self.layers((torch.cat([a, b]) + 1) / 2)   # the classifier takes [0, 1] images
        total = a.new_zeros(len(a))
        for f in both:
            f = f.float() / (f.float().pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fa, fb = f[:len(a)], f[len(a):]
            total = total + (fa - fb).pow(2).sum(1).mean((1, 2))
        return total * self.scale


def reference_classifier(reference: tuple[torch.Tensor, torch.Tensor], ctx: "Context",
                         arch: str = "smallcnn") -> nn.Module:
    """A classifier trained with the shared recipe on the reference split (cached)."""
    x, y = reference
    key = {"perceptual": "reference-classifier", "arch": arch, "reference": tensor_fingerprint(x, y),
           "train": ctx.train.as_dict()}

    def build():
        model = create_model(arch, x.shape[1], ctx.num_classes)
        model = train_supervised(model, x, y, ctx.train, ctx.device, ctx.seed,
                                 progress=lambda **kw: ctx.pbar(**kw))
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    model = create_model(arch, x.shape[1], ctx.num_classes)
    model.load_state_dict(ctx.cached(key, build, name="perceptual"))
    return model.to(ctx.device)


def perceptual_distance(kind: str, reference: tuple[torch.Tensor, torch.Tensor], ctx: "Context",
                        arch: str = "smallcnn") -> nn.Module:
    """The distance ``kind`` asks for (``auto``: LPIPS if loadable, else the stand-in);
    writes which one is used, and why, to ``ctx.notes["perceptual"]``."""
    if kind not in KINDS:
        raise ValueError(f"perceptual must be one of {KINDS}, got {kind!r}")
    reason = lpips_unavailable(min(reference[0].shape[-2:])) if kind in ("auto", "lpips") else None
    if kind == "lpips" and reason:
        raise RuntimeError(f"perceptual='lpips' asked for, but {reason}; use perceptual='auto' or 'reference'")
    if kind != "reference" and reason is None:
        try:
            distance = LPIPSDistance().to(ctx.device)
            ctx.notes["perceptual"] = "lpips-alex"
            return distance
        except Exception as err:   # e.g. a corrupt weights file
            if kind == "lpips":
                raise
            reason = f"loading LPIPS failed ({type(err).__name__}: {err})"
    note = f"reference-{arch} (LPIPS-style distance over a {arch} trained on the reference split)"
    if reason:
        note += f"; LPIPS-AlexNet not used: {reason}"
        warnings.warn(f"LE: {note}", stacklevel=2)
    distance = FeatureDistance(reference_classifier(reference, ctx, arch))
    scale = distance.calibrate(reference[0][:256].to(ctx.device) * 2 - 1)
    ctx.notes["perceptual"] = f"{note}; scale {scale:.4g} (gradient matched to the pixel MSE)"
    return distance
