"""The budget guard: does a poison set respect the threat model its attack declared?

Every poison set passes through :func:`check_budget` before any training, so a table
never compares an attack that cheated on its budget. A violation is a
:class:`BudgetViolation` (a :class:`~uebench.registry.UserError`) whose one-line message
names the norm, the worst measured value, the budget and the image that broke it.
"""
from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from uebench.api import ThreatModel
from uebench.registry import UserError
from uebench.release import LEVELS_MOVED

if TYPE_CHECKING:
    from uebench.api import Attack

_CHUNK = 1024  # images per step, so the guard never holds a second full copy of the set

# Budgets far above the field's norms, on [0, 1] images: published unlearnable examples use L∞
# 8/255 (16/255 at most) and per-image L2 norms of 0.5 to 1.3 at 32×32×3 (LSP: √(C·H·W)·6/255).
# Past these a row no longer measures an imperceptible perturbation; most often the value is a
# typo (-A em.eps=1 meant as 1/255). A warning, not an error: a study of large budgets is allowed.
IMPLAUSIBLE_BUDGET = {"linf": 32 / 255, "l2": 8.0}


class BudgetViolation(UserError):
    """A poison set breaks its declared threat model or is not a valid image tensor."""


def declared_threat_model(attack: "Attack", image_shape: tuple[int, int, int]) -> ThreatModel:
    """The attack's threat model for images of ``image_shape`` (C, H, W).

    Budgets that scale with the image (LSP's L2 = √(C·H·W)·6/255) need the shape; an
    attack whose ``threat_model`` takes an ``image_shape`` argument gets it, others are
    called without arguments.
    """
    if "image_shape" in inspect.signature(attack.threat_model).parameters:
        return attack.threat_model(image_shape=tuple(image_shape))
    return attack.threat_model()


def budget_warning(threat: ThreatModel) -> str | None:
    """A warning when ``threat`` is far above the field's norms (IMPLAUSIBLE_BUDGET), else None."""
    limit = IMPLAUSIBLE_BUDGET.get(threat.norm)
    if limit is None or threat.eps <= limit:
        return None
    return (f"budget {threat} is far above the field's norms (warned above {ThreatModel(threat.norm, limit)}); "
            f"did you mean a fraction such as 8/255?")


def check_budget(clean: torch.Tensor, poisoned: torch.Tensor, threat: ThreatModel,
                 atol: float = 1e-5, released: str | None = None) -> None:
    """Raise :class:`BudgetViolation` unless ``poisoned`` is a valid perturbation of ``clean``.

    Always checked: same shape, finite values, values in [0, 1] (within ``atol``).
    Then, per image, with δ = poisoned − clean: L∞ = max |δ|; L2 = ‖δ‖₂ over all pixels
    and channels; L0 = the number of H×W positions where any channel moved by more than
    ``atol``. The budget may be exceeded by ``atol`` (float rounding), never more; images
    ``released`` by a rule of ``uebench.release`` (the attack's official export to uint8) may
    exceed an L2 budget by what that rule can add, √(C·H·W) times the levels it moves a value
    (the official AR and LSP exports exceed their L2 budgets this way). L∞ and L0 budgets get
    nothing extra: an official export stays within ±⌊255·ε⌋ levels.
    """
    if clean.shape != poisoned.shape:
        raise BudgetViolation(f"poisoned images have shape {tuple(poisoned.shape)}, "
                              f"the clean images {tuple(clean.shape)}; an attack must keep the shape")
    if poisoned.ndim != 4:
        raise BudgetViolation(f"expected images of shape (N, C, H, W), got {tuple(poisoned.shape)}")
    worst = {"nonfinite": None, "low": (0.0, -1), "high": (0.0, -1), "norm": (0.0, -1)}
    for start in range(0, len(poisoned), _CHUNK):
        p = poisoned[start:start + _CHUNK].detach().to("cpu", torch.float64)
        c = clean[start:start + _CHUNK].detach().to("cpu", torch.float64)
        finite = torch.isfinite(p).flatten(1).all(1)
        if worst["nonfinite"] is None and not finite.all():
            worst["nonfinite"] = start + int((~finite).nonzero()[0])
        p = torch.nan_to_num(p, nan=0.0, posinf=0.0, neginf=0.0)  # reported above; keep measuring the rest
        _track(worst, "low", -p.flatten(1).amin(1), start)
        _track(worst, "high", p.flatten(1).amax(1), start)
        _track(worst, "norm", _per_image_norm(p - c, threat.norm, atol, clean=c), start)
    if worst["nonfinite"] is not None:
        raise BudgetViolation(f"poisoned image {worst['nonfinite']} has NaN or infinite values")
    (low, i_low), (high, i_high) = worst["low"], worst["high"]
    if low > atol:
        raise BudgetViolation(f"pixel values must lie in [0, 1]: minimum {-low:.4g} at image {i_low}")
    if high > 1 + atol:
        raise BudgetViolation(f"pixel values must lie in [0, 1]: maximum {high:.4g} at image {i_high}")
    value, index = worst["norm"]
    # a fitted blur's taps are known to within what uint8 rounding leaves (CONV_ROUNDING of the largest)
    tolerance = CONV_ROUNDING if threat.norm == "conv" else atol
    if threat.norm == "l2" and released in LEVELS_MOVED:
        tolerance += math.sqrt(math.prod(clean.shape[1:])) * LEVELS_MOVED[released] / 255
    if threat.norm != "none" and value > threat.eps + tolerance:
        raise BudgetViolation(f"{_describe(threat.norm, value, threat.eps)} at image {index} "
                              f"(declared threat model: {threat})")


# A blurred image is fitted to within uint8 rounding (and the 0/1 clip): RMS residual at most this.
CONV_RESIDUAL = 1.5 / 255


def conv_fit(clean: torch.Tensor, poisoned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the 3×3 channel-shared filter v that best maps ``clean`` to ``poisoned`` (least
    squares over every pixel and channel, zero padding), and the RMS residual of that fit.
    Returns (taps, residual): taps of shape (N, 9)."""
    n, c, h, w = clean.shape
    patches = F.unfold(clean.reshape(n * c, 1, h, w), 3, padding=1)            # (N·C, 9, H·W)
    a = patches.reshape(n, c, 9, h * w).permute(0, 1, 3, 2).reshape(n, c * h * w, 9)
    b = poisoned.reshape(n, c * h * w, 1)
    taps = torch.linalg.lstsq(a, b, driver="gelsd").solution                   # (N, 9, 1)
    residual = (a @ taps - b).square().mean(dim=(1, 2)).sqrt()
    return taps[..., 0], residual


# How far uint8 rounding moves a fitted tap, relative to the largest: a tap below −2 % is a real
# negative tap, and a ratio may exceed the budget by 2 % before it is a real violation (measured:
# the official CUDA poison of the CIFAR-10 subset at blur 0.3 fits to at most 0.309 on flat images).
CONV_ROUNDING = 0.02


def conv_ratio(taps: torch.Tensor) -> torch.Tensor:
    """What the ``conv`` threat model bounds: the largest tap but one over the largest (a
    negative tap, which no blur has, counts as its size above 1)."""
    top = taps.amax(1).clamp_min(1e-12)
    second = taps.sort(1, descending=True).values[:, 1]
    negative = (-taps).clamp_min(0).amax(1) / top
    return torch.maximum(second / top, torch.where(negative > CONV_ROUNDING, 1 + negative, torch.zeros_like(negative)))


def _per_image_norm(delta: torch.Tensor, norm: str, atol: float, clean: torch.Tensor | None = None) -> torch.Tensor:
    if norm == "linf":
        return delta.abs().flatten(1).amax(1)
    if norm == "l2":
        return delta.flatten(1).norm(dim=1)
    if norm == "l0":
        return (delta.abs() > atol).any(dim=1).flatten(1).sum(1).to(delta.dtype)
    if norm == "conv":
        taps, residual = conv_fit(clean, clean + delta)
        # an image the filter does not explain is out of the model whatever its taps: report it as infinite
        return torch.where(residual <= CONV_RESIDUAL, conv_ratio(taps), torch.full_like(residual, math.inf))
    return torch.zeros(len(delta), dtype=delta.dtype)


def _track(worst: dict, key: str, values: torch.Tensor, start: int) -> None:
    """Keep the largest value seen so far under ``key``, with its global image index."""
    if len(values) == 0:
        return
    value, index = values.max(0)
    if value.item() > worst[key][0] or worst[key][1] < 0:
        worst[key] = (value.item(), start + int(index))


def _describe(norm: str, value: float, eps: float) -> str:
    if norm == "conv":
        if math.isinf(value):
            return (f"not a 3×3 blur of the clean image: no channel-shared 3×3 filter explains it to within "
                    f"{CONV_RESIDUAL * 255:g}/255 RMS")
        return f"blur budget exceeded: a tap at {value:.3g} of the largest > budget {eps:g}"
    if norm == "linf":
        return f"L∞ budget exceeded: max |δ| = {value * 255:.3g}/255 > budget {eps * 255:.3g}/255"
    if norm == "l2":
        return f"L2 budget exceeded: ‖δ‖₂ = {value:.4g} > budget {eps:.4g}"
    return f"L0 budget exceeded: {int(value)} pixel positions changed > budget {int(eps)}"


def measured_budget(clean: torch.Tensor, poisoned: torch.Tensor, threat: ThreatModel | None = None) -> dict[str, float]:
    """The largest perturbation of any image, in each norm (for the record); for a ``conv``
    threat model also the largest tap ratio and fit residual the guard measured."""
    delta = (poisoned - clean).flatten(1)
    changed = ((poisoned - clean).abs().amax(1) > 0).flatten(1).sum(1)   # pixel positions
    measured = {"linf_max": float(delta.abs().max()) if delta.numel() else 0.0,
                "l2_max": float(delta.norm(dim=1).max()) if delta.numel() else 0.0,
                "l0_max": int(changed.max()) if changed.numel() else 0}
    if threat is not None and threat.norm == "conv" and len(clean):
        ratios, residuals = [], []
        for start in range(0, len(clean), _CHUNK):
            taps, residual = conv_fit(clean[start:start + _CHUNK].double(), poisoned[start:start + _CHUNK].double())
            ratios.append(conv_ratio(taps))
            residuals.append(residual)
        measured |= {"conv_ratio_max": float(torch.cat(ratios).max()),
                     "conv_residual_max": float(torch.cat(residuals).max())}
    return measured
