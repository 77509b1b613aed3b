"""The budget guard: does a poison set respect the threat model its attack declared?

Every poison set passes through :func:`check_budget` before any training, so a table
never compares an attack that cheated on its budget. A violation is a
:class:`BudgetViolation` (a :class:`~uebench.registry.UserError`) whose one-line message
names the norm, the worst measured value, the budget and the image that broke it.
"""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch

from uebench.api import ThreatModel
from uebench.registry import UserError

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
                 atol: float = 1e-5) -> None:
    """Raise :class:`BudgetViolation` unless ``poisoned`` is a valid perturbation of ``clean``.

    Always checked: same shape, finite values, values in [0, 1] (within ``atol``).
    Then, per image, with δ = poisoned − clean: L∞ = max |δ|; L2 = ‖δ‖₂ over all pixels
    and channels; L0 = the number of H×W positions where any channel moved by more than
    ``atol``. The budget may be exceeded by ``atol`` (float rounding), never more.
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
        _track(worst, "norm", _per_image_norm(p - c, threat.norm, atol), start)
    if worst["nonfinite"] is not None:
        raise BudgetViolation(f"poisoned image {worst['nonfinite']} has NaN or infinite values")
    (low, i_low), (high, i_high) = worst["low"], worst["high"]
    if low > atol:
        raise BudgetViolation(f"pixel values must lie in [0, 1]: minimum {-low:.4g} at image {i_low}")
    if high > 1 + atol:
        raise BudgetViolation(f"pixel values must lie in [0, 1]: maximum {high:.4g} at image {i_high}")
    value, index = worst["norm"]
    if threat.norm != "none" and value > threat.eps + atol:
        raise BudgetViolation(f"{_describe(threat.norm, value, threat.eps)} at image {index} "
                              f"(declared threat model: {threat})")


def _per_image_norm(delta: torch.Tensor, norm: str, atol: float) -> torch.Tensor:
    if norm == "linf":
        return delta.abs().flatten(1).amax(1)
    if norm == "l2":
        return delta.flatten(1).norm(dim=1)
    if norm == "l0":
        return (delta.abs() > atol).any(dim=1).flatten(1).sum(1).to(delta.dtype)
    return torch.zeros(len(delta), dtype=delta.dtype)


def _track(worst: dict, key: str, values: torch.Tensor, start: int) -> None:
    """Keep the largest value seen so far under ``key``, with its global image index."""
    if len(values) == 0:
        return
    value, index = values.max(0)
    if value.item() > worst[key][0] or worst[key][1] < 0:
        worst[key] = (value.item(), start + int(index))


def _describe(norm: str, value: float, eps: float) -> str:
    if norm == "linf":
        return f"L∞ budget exceeded: max |δ| = {value * 255:.3g}/255 > budget {eps * 255:.3g}/255"
    if norm == "l2":
        return f"L2 budget exceeded: ‖δ‖₂ = {value:.4g} > budget {eps:.4g}"
    return f"L0 budget exceeded: {int(value)} pixel positions changed > budget {int(eps)}"


def measured_budget(clean: torch.Tensor, poisoned: torch.Tensor) -> dict[str, float]:
    """The largest perturbation of any image, in each norm (for the record)."""
    delta = (poisoned - clean).flatten(1)
    changed = ((poisoned - clean).abs().amax(1) > 0).flatten(1).sum(1)   # pixel positions
    return {"linf_max": float(delta.abs().max()) if delta.numel() else 0.0,
            "l2_max": float(delta.norm(dim=1).max()) if delta.numel() else 0.0,
            "l0_max": int(changed.max()) if changed.numel() else 0}
