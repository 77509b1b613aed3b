"""Presets: named tables. Every value can be overridden by a CLI flag (``--epochs 30``).

A preset fixes everything that makes two numbers comparable: data and splits, the
victim model, the training recipe and the seeds. Methods scale themselves down for a
preset through their own ``presets`` dict (see ``uebench.api.Method``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from uebench.registry import UserError, did_you_mean
from uebench.models import check_model
from uebench.protocols import PROTOCOLS
from uebench.train import CROP_FILLS, TrainConfig

MAX_SEED = 2**31 - 1      # every generator a cell seeds takes it (ctx.generator multiplies it by 1,000,003)


@dataclass
class TableConfig:
    """Everything that defines one table (one leaderboard), apart from attacks and defenses."""

    preset: str
    dataset: str
    model: str
    train: TrainConfig
    seeds: tuple[int, ...] = (0,)
    protocol: str = "supervised"     # supervised | contrastive
    n_reference: int = 0             # clean reference split carved from the training set
    n_protected: int | None = None   # cap on the protected set (None: the rest of the training set)
    train_subset: int | None = None  # stratified subset of the dataset's training split
    test_subset: int | None = None   # stratified subset of its test split
    split_seed: int = 0              # fixed: every cell of a table sees the same split
    contrastive: dict = field(default_factory=dict)  # ContrastiveConfig overrides (contrastive protocol)
    # CPU threads per cell, part of the recipe: CPU float sums depend on it (about half a point
    # on a 15-epoch cell), so fixing it makes local, --jobs N and Ray runs give one table.
    # None: as the scheduler gives (the `cpu` table, made before this field; GPU presets).
    cell_threads: int | None = None
    # the architecture every attack crafts its poison with, where the attack trains one and its
    # own `surrogate` / `arch` hyperparameter is unset (--surrogate); None: the victim (`model`),
    # as in every table made before this field (it joins the table id only when set)
    surrogate: str | None = None


PRESETS: dict[str, dict[str, Any]] = {
    # seconds: for tests
    "smoke": dict(dataset="digits", model="smallcnn", seeds=(0,), n_reference=200, n_protected=400, cell_threads=1,
                  test_subset=200, train=dict(epochs=3, batch_size=64, lr=0.05),
                  contrastive=dict(epochs=2, batch_size=128, probe_epochs=5)),
    # the default: the embedded digits on CPU, a few minutes for the whole grid
    "demo": dict(dataset="digits", model="smallcnn", seeds=(0, 1), n_reference=300, cell_threads=1,
                 train=dict(epochs=15, batch_size=64, lr=0.05),
                 contrastive=dict(epochs=30, batch_size=256, probe_epochs=30)),
    # CIFAR-10 at CPU scale: 10,000 / 2,000 images, the small CNN, minutes per cell
    "cpu": dict(dataset="cifar10", train_subset=10_000, test_subset=2_000, model="smallcnn", seeds=(0,),
                n_reference=2_000, train=dict(epochs=15, batch_size=128, lr=0.1),
                contrastive=dict(epochs=30, batch_size=256, probe_epochs=30)),
    # one GPU, minutes per cell: the `paper` recipe (ResNet-18, SGD 0.1 cosine, batch 128, zero-padded
    # crop + flip) on the CIFAR-10 subset of the `cpu` table (10,000 / 2,000 images, 2,000 of them the
    # reference split), 40 epochs instead of 60 (2,500 steps: 8,000 images plateau sooner than
    # 40,000), each method at its paper hyperparameters unless its `gpu` preset says otherwise.
    "gpu": dict(dataset="cifar10", train_subset=10_000, test_subset=2_000, model="resnet18", seeds=(0,),
                n_reference=2_000,
                train=dict(epochs=40, batch_size=128, lr=0.1, nesterov=False, schedule="cosine", crop_fill="zeros"),
                contrastive=dict()),
    # the published protocol (Huang et al. 2021; Liu et al. 2023): full CIFAR-10, ResNet-18,
    # 60 epochs of SGD 0.1 (momentum 0.9, wd 5e-4, cosine), batch 128, crop (zero padding,
    # torchvision's RandomCrop(32, padding=4) as APBench) + flip; GPU.
    # 10,000 of the 50,000 training images are the clean reference split (as in BridgePure).
    "paper": dict(dataset="cifar10", model="resnet18", seeds=(0, 1, 2), n_reference=10_000,
                  train=dict(epochs=60, batch_size=128, lr=0.1, nesterov=False, schedule="cosine",
                             crop_fill="zeros"),
                  contrastive=dict()),
}

TRAIN_FIELDS = {f.name: f.type for f in fields(TrainConfig)}


def table_config(preset: str, **overrides: Any) -> TableConfig:
    """The preset's values with ``overrides`` applied (TrainConfig fields may be given flat)."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}: {did_you_mean(preset, PRESETS)}choose one of {', '.join(PRESETS)}")
    values = {k: v for k, v in PRESETS[preset].items()}
    train = TrainConfig(**values.pop("train"))
    train_over = {k: overrides.pop(k) for k in list(overrides) if k in TRAIN_FIELDS and overrides[k] is not None}
    try:
        train = replace(train, **train_over)
    except TypeError as err:
        raise UserError(f"bad training override: {err}") from err
    known = {f.name for f in fields(TableConfig)}
    for key, value in overrides.items():
        if key not in known:
            raise UserError(f"unknown setting {key!r}; known: {', '.join(sorted(known | set(TRAIN_FIELDS)))}")
        if value is not None:
            values[key] = value
    cfg = TableConfig(preset=preset, train=train, **values)
    cfg.seeds = tuple(int(s) for s in cfg.seeds)
    if cfg.surrogate == cfg.model:   # the default, said out loud: the same table
        cfg.surrogate = None
    validate(cfg)
    return cfg


def validate(cfg: TableConfig) -> None:
    t = cfg.train
    twice = sorted({s for s in cfg.seeds if cfg.seeds.count(s) > 1})
    outside = [s for s in cfg.seeds if not 0 <= s <= MAX_SEED]
    checks = [
        (t.epochs >= 1, f"--epochs must be >= 1, got {t.epochs}"),
        (t.batch_size >= 1, f"--batch-size must be >= 1, got {t.batch_size}"),
        (math.isfinite(t.lr) and t.lr > 0, f"--lr must be a finite number > 0, got {t.lr}"),
        (math.isfinite(t.weight_decay) and t.weight_decay >= 0,
         f"--weight-decay must be a finite number >= 0, got {t.weight_decay}"),
        (math.isfinite(t.momentum) and 0 <= t.momentum < 1, f"momentum must be in [0, 1), got {t.momentum}"),
        (_model_problem(cfg.model) is None, f"--model: {_model_problem(cfg.model)}"),
        (cfg.surrogate is None or _model_problem(cfg.surrogate) is None,
         f"--surrogate: {_model_problem(cfg.surrogate or '')}"),
        (t.schedule in ("onecycle", "cosine", "multistep"), f"--schedule must be onecycle, cosine or multistep, got {t.schedule!r}"),
        (t.crop_fill in CROP_FILLS, f"--crop-fill must be {' or '.join(CROP_FILLS)}, got {t.crop_fill!r}"),
        (len(cfg.seeds) >= 1, "give at least one seed"),
        (not outside, f"seeds must lie in 0..{MAX_SEED}, got {(outside or [0])[0]}"),
        (not twice, f"seed {', '.join(map(str, twice))} given twice; give each seed once"),
        (cfg.protocol in PROTOCOLS, f"--protocol must be {' or '.join(PROTOCOLS)}, got {cfg.protocol!r}"),
        (cfg.n_reference >= 0, f"--n-reference must be >= 0, got {cfg.n_reference}"),
        (cfg.n_protected is None or cfg.n_protected >= 1, f"--n-protected must be >= 1, got {cfg.n_protected}"),
        (cfg.train_subset is None or cfg.train_subset >= 1,
         f"--train-subset must be >= 1 (leave it out for the whole split), got {cfg.train_subset}"),
        (cfg.test_subset is None or cfg.test_subset >= 1,
         f"--test-subset must be >= 1 (leave it out for the whole split), got {cfg.test_subset}"),
        (cfg.cell_threads is None or cfg.cell_threads >= 1, f"--cell-threads must be >= 1, got {cfg.cell_threads}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def _model_problem(name: str) -> str | None:
    """Why ``name`` is not a model uebench builds (with the closest names), or None."""
    try:
        check_model(name)
    except ValueError as err:
        from uebench.victims import FAMILIES
        family = name.split("-w")[0]
        hint = did_you_mean(family, FAMILIES) if family not in FAMILIES else ""
        what, _, choices = str(err).partition(": ")
        return f"{what}: {hint}{choices}" if hint and choices else f"{hint}{err}"
    return None
