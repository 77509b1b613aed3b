"""The plugin API: what an attack and a defense are.

Every image tensor crossing this API is float32, NCHW, in [0, 1]; labels are int64.
Hyperparameters are dataclass fields with the paper's defaults, so ``EM(steps=10)``
works, ``repr`` prints them, and :func:`hparams` turns them into the record.

An **attack** turns the protected training images into perturbed images
(:meth:`Attack.generate`). A **defense** turns a possibly poisoned training set, plus
a clean reference set it may use, into a trained classifier (:meth:`Defense.fit`); the
default ``fit`` purifies the data once and hands it to the shared trainer, which calls
the defense's ``augment`` and ``loss`` hooks on every batch.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F

from uebench.protocols import PROTOCOLS as _REGISTERED
from uebench.release import FLOAT_UNTIL_RECOMPUTED, RULES, on_uint8_grid, release_images

if TYPE_CHECKING:  # imported for type hints only, to keep plugin import light
    from uebench.context import Context

NORMS = ("linf", "l2", "l0", "conv", "none")
# the protocols' names (uebench.protocols): a defense applies to every protocol that trains a victim
# through defenses by default, a detector to the detection protocol
PROTOCOLS = tuple(name for name, p in _REGISTERED.items() if p.column == "defense")
DETECTION = tuple(name for name, p in _REGISTERED.items() if p.column == "detector")


@dataclass(frozen=True)
class ThreatModel:
    """The budget an attack declares and the budget guard enforces.

    ``linf``: max |δ| per pixel, on the [0, 1] scale (8/255 is the field's default).
    ``l2``: the L2 norm of δ per image, on the [0, 1] scale.
    ``l0``: the number of pixel positions (H×W locations) an image may change.
    ``conv``: not a norm ball: each image may only be blurred by a 3×3 filter (the same for
    every channel) with non-negative taps, every tap but the largest at most ``eps`` times
    the largest, then rescaled by a constant and rounded to uint8 (convolution-based
    unlearnable data); the guard fits that filter to each image and checks it.
    ``none``: no budget (only the valid pixel range is checked).
    """

    norm: str
    eps: float

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"threat model norm must be one of {NORMS}, got {self.norm!r}")
        if not (self.eps >= 0 and math.isfinite(self.eps)):
            raise ValueError(f"threat model budget must be a finite number >= 0, got {self.eps!r}")

    def __str__(self) -> str:
        if self.norm == "linf":
            return f"L∞ {self.eps * 255:g}/255"
        if self.norm == "l2":
            return f"L2 {self.eps:.3g}"
        if self.norm == "l0":
            return f"L0 {int(self.eps)} px"
        if self.norm == "conv":
            return f"3×3 blur ≤ {self.eps:g}"
        return "unbounded"


def hparams(method: Any) -> dict[str, Any]:
    """The hyperparameters of an attack or defense instance, as plain JSON values."""
    return {f.name: _plain(getattr(method, f.name)) for f in dataclasses.fields(method)}


def typed_hparams(cls: type, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` hyperparameters converted to the types ``cls``'s fields declare (an int where
    a float is declared becomes a float, 5.0 where an int is declared becomes 5).

    Raises ValueError naming the field for a value of another type ("abc" for a float) or a
    float that is not finite. Names that are not fields pass through (the constructor
    rejects them). Ranges are the method's own business (its ``__post_init__``).
    """
    try:
        hints = typing.get_type_hints(cls)
    except Exception:            # a plugin with an annotation that does not resolve
        hints = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    typed = {}
    for name, value in given.items():
        field = fields.get(name)
        if field is None:
            typed[name] = value
            continue
        default = field.default if field.default is not dataclasses.MISSING else None
        typed[name] = _convert(name, value, hints.get(name, type(default) if default is not None else Any))
    return typed


def _convert(name: str, value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` (float, int, bool, str, X | None, tuple[...], list[...])."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        first_error = None
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(name, value, option)
            except ValueError as err:
                first_error = first_error or err
        raise first_error or ValueError(f"{name}: cannot take {value!r}")
    if origin in (tuple, list) or hint in (tuple, list):
        items = value if isinstance(value, (tuple, list)) else (value,)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise ValueError(f"{name} must be {len(args)} values separated by commas, got {value!r}")
            return tuple(_convert(name, v, a) for v, a in zip(items, args))
        inner = args[0] if args else Any
        return (origin or hint)(_convert(name, v, inner) for v in items)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number (e.g. 0.5 or 8/255), got {value!r}")
        value = float(value)
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValueError(f"{name} must be text, got {value!r}")
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return float(value)
    return value


class Method:
    """What attacks and defenses share: metadata and dataclass hyperparameters.

    Subclasses are ``@dataclass`` classes; their fields are the hyperparameters.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    year: ClassVar[int] = 0
    # Per-preset hyperparameter overrides, e.g. {"cpu": {"rounds": 5}, "smoke": {...}}:
    # how the method is scaled down for small runs. The record stores the values used.
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    # True for a method that cannot run without the user's input (a released poison file):
    # `all` and wildcards leave it out, naming it selects it.
    by_name_only: ClassVar[bool] = False

    @classmethod
    def for_preset(cls, preset: str, **overrides: Any) -> "Method":
        """An instance with the preset's overrides, then the user's, applied."""
        return cls(**{**cls.presets.get(preset, {}), **overrides})

    @classmethod
    def declaration_problem(cls) -> str | None:
        """What is wrong with the class's declarations (the registry refuses it), or None."""
        return None

    @classmethod
    def describe(cls) -> str:
        """One line: the paper, for listings."""
        return f"{cls.paper} ({cls.year})" if cls.year else cls.paper


@dataclass
class Attack(Method):
    """An unlearnable-example generator. Override :meth:`generate` and :meth:`threat_model`.

    ``target`` says which learner the attack aims at: ``supervised``, ``contrastive`` or both
    (``"supervised, contrastive"``); it is descriptive (listings, records), any protocol can run it.

    ``generate`` always crafts on the whole protected split, as the papers' poison-ratio experiments
    do (EM's official code and APBench craft on the full training set, then perturb a random
    subset), whatever ``--poison-ratio``: the poison set is
    made once per (attack, seed) and a cell at ratio r < 1 then trains on the poisoned images at a
    seeded r-fraction of the indices and the clean images elsewhere (``uebench/ratio.py``). An
    attack whose paper crafts on the poisoned part alone would say so here and in its docstring.

    ``release`` names how the poison becomes the images a data owner publishes (a rule of
    :data:`uebench.release.RULES`: ``round``, ``truncate`` or ``round-noise``), the method's own
    official export, stated in its docstring; ``__call__`` applies it to what ``generate`` returns
    whenever the clean images are uint8 levels, and the budget guard checks the released images.
    An attack that exports by itself (its values already on the grid) passes through unchanged.
    """

    target: ClassVar[str] = "supervised"
    release: ClassVar[str] = "round"

    @classmethod
    def declaration_problem(cls) -> str | None:
        if cls.release not in RULES:
            return f"release must be one of {', '.join(sorted(RULES))} (uebench/release.py), got {cls.release!r}"
        return None

    def threat_model(self) -> ThreatModel:
        raise NotImplementedError(f"{type(self).__name__} must declare its threat model")

    def generate(self, x: torch.Tensor, y: torch.Tensor, ctx: "Context") -> torch.Tensor:
        """Return the perturbed images (same shape as ``x``, values in [0, 1])."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, y: torch.Tensor, ctx: "Context") -> torch.Tensor:
        torch.manual_seed(ctx.seed)
        out = self.generate(x, y, ctx).detach().to("cpu", torch.float32)
        clean = x.detach().to("cpu", torch.float32)
        if self.name in FLOAT_UNTIL_RECOMPUTED:         # uebench/release.py: the built-ins still pending
            ctx.notes["released_as"] = "float (until its row is recomputed)"
        elif not on_uint8_grid(clean):
            ctx.notes["released_as"] = "float (the clean images are not uint8)"
        else:
            out = release_images(clean, out, self.release)
            ctx.notes["released_as"] = self.release
        return out.contiguous()


@dataclass
class Defense(Method):
    """A countermeasure. Override any of the hooks; the default is standard training.

    ``protocols`` lists the evaluation protocols the defense applies to (a defense that
    changes the supervised loss does not apply to contrastive learning);
    ``transforms_test`` is True when the defense also transforms test images.
    """

    protocols: ClassVar[tuple[str, ...]] = PROTOCOLS
    transforms_test: ClassVar[bool] = False

    def prepare(self, reference: tuple[torch.Tensor, torch.Tensor], ctx: "Context") -> None:
        """Build shared state from the clean reference set (e.g. a diffusion model).

        Runs once per table before any cell; implementations cache what they build
        with ``ctx.cached`` so every cell reuses it.
        """

    def purify(self, x: torch.Tensor, y: torch.Tensor,
               reference: tuple[torch.Tensor, torch.Tensor], ctx: "Context") -> torch.Tensor:
        """Transform the whole training set once before training (identity by default)."""
        return x

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform one training batch on the device, after crop and flip.

        ``y`` arrives as int64 labels or (N, K) soft labels and may be returned soft.
        """
        return x, y

    def loss(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
             epoch: int) -> torch.Tensor:
        """The training loss on one batch (cross-entropy by default; soft labels allowed)."""
        return F.cross_entropy(model(x), y)

    def leaked_pairs(self) -> int:
        """How many (clean, protected) pairs of the protected split the defense's threat model
        lets it see (0, the default: none). A defense that returns k > 0 finds k seeded pairs in
        ``ctx.leaked_pairs`` (clean images, their protected versions) during ``fit``; the record
        keeps k and the draw, and the table says so. No other defense ever sees a clean image
        of the protected split."""
        return 0

    def transform_test(self, x: torch.Tensor) -> torch.Tensor:
        """Transform test images before evaluation; set ``transforms_test`` if overridden."""
        return x

    def fit(self, x: torch.Tensor, y: torch.Tensor,
            reference: tuple[torch.Tensor, torch.Tensor], ctx: "Context") -> torch.nn.Module:
        """Train a classifier on the (possibly poisoned) set ``x, y``."""
        x = self.purify(x, y, reference, ctx)
        return ctx.train_classifier(x, y, defense=self)


@dataclass
class Detector(Defense):
    """A detector of unlearnable examples: it scores every training image, higher meaning more
    likely protected. Override :meth:`score`, and :meth:`flag` for a decision rule of its own.

    It applies to the detection protocol only (``--protocol detection``,
    :mod:`uebench.protocols.detection`): the cell hands it the protected split with a seeded half
    of it poisoned and the clean reference split (clean images it may use), never the mask, and
    measures the AUROC of its scores against the mask and the accuracy of its flags. Its name
    contains ``detect``.
    """

    protocols: ClassVar[tuple[str, ...]] = DETECTION

    def score(self, x: torch.Tensor, y: torch.Tensor, reference: tuple[torch.Tensor, torch.Tensor],
              ctx: "Context") -> torch.Tensor:
        """One score per image of ``x`` (shape (N,)): higher is more likely protected."""
        raise NotImplementedError

    def flag(self, scores: torch.Tensor) -> torch.Tensor:
        """The detector's own yes/no decision per image (bool, shape (N,)); by default a score
        above 0.5 (for scores that are probabilities)."""
        return scores > 0.5

    def fit(self, x, y, reference, ctx):
        raise TypeError(f"{self.name} is a detector: it scores images (--protocol detection), it trains no victim")
