"""The poison ratio: a seeded part of the protected split is poisoned, the rest stays clean.

``uebench run --poison-ratio 0.2,0.5,0.8,1.0`` (default 1.0). The attack crafts as its paper
does, on the whole protected split, once per (attack, seed) whatever the ratios (the poison
cache, poisons.py); a cell at ratio r takes the poisoned images at ``k = round(r · n)`` indices
and the clean images elsewhere. The indices are the first ``k`` of a permutation of the
protected split drawn with a ``torch.Generator`` seeded by the split seed and the cell seed
(never the global RNG): the same for every attack and defense of one seed, and nested
(the images poisoned at 0.2 are among those poisoned at 0.5); the official EM code draws
``int(r · n)`` with NumPy's global generator, the same count at every ratio of the committed
table's 8,000 images. Each record of a ratio below 1
keeps the ratio, the count and a sha256 of the chosen indices (``Record.poison``); a record at
1.0 is exactly what it was before ratios existed (no ``poison`` field, the same path).

The reference the literature reads a ratio against is ``clean-part``: a row that, at ratio r,
trains on the ``n − k`` clean images alone (the same draw's complement), so "does the poisoned
part still teach the victim anything" is the gap between it and the attack's row.
"""
from __future__ import annotations

import hashlib
import math
from typing import NamedTuple

import torch

from uebench.registry import UserError
from uebench.storage import content_key

CLEAN_PART = "clean-part"   # the row that trains on the clean part alone
FULL = 1.0                  # the ratio every table had before ratios existed
DRAW = "the first k of a torch.randperm of the protected split, seeded by the split seed and the cell seed"


def ratio_text(ratio: float) -> str:
    """How a ratio is written in paths, headings and errors: ``0.5``, ``0.25``, ``1``."""
    return f"{ratio:.6g}"


def parse_ratios(text: str) -> list[float]:
    """``0.2,0.5,0.8,1.0`` -> ``[0.2, 0.5, 0.8, 1.0]``; a UserError (one line, exit 2) for a value
    that is not a number, lies outside (0, 1], or is given twice."""
    ratios: list[float] = []
    for part in str(text).split(","):
        try:
            value = float(part.strip())
        except ValueError:
            raise UserError(f"--poison-ratio expects numbers in (0, 1] like 0.2,0.5,1.0, got {part.strip()!r}") from None
        if not (math.isfinite(value) and 0 < value <= 1):
            raise UserError(f"--poison-ratio {part.strip()}: a poison ratio lies in (0, 1] (1: the whole protected split)")
        if any(ratio_text(value) == ratio_text(r) for r in ratios):
            raise UserError(f"--poison-ratio {text}: {ratio_text(value)} is given twice")
        ratios.append(float(ratio_text(value)))
    return ratios


def poisoned_count(n: int, ratio: float) -> int:
    return n if ratio == FULL else int(round(ratio * n))


def check_ratio(ratio: float, n: int) -> None:
    """A ratio below 1 must poison at least one image and leave at least one clean."""
    k = poisoned_count(n, ratio)
    if ratio != FULL and not 1 <= k <= n - 1:
        raise UserError(f"--poison-ratio {ratio_text(ratio)} poisons {k} of the {n} protected images; a ratio "
                        f"below 1 must poison at least one and leave at least one clean")


def seed_file(seed: int, ratio: float = FULL) -> str:
    """A record's file name: ``seed0.json``, or ``seed0-ratio0.5.json`` below ratio 1."""
    return f"seed{seed}.json" if ratio == FULL else f"seed{seed}-ratio{ratio_text(ratio)}.json"


def grid_cells(attacks: list, defenses: list, seeds, ratios: list[float] | None, n_protected: int) -> list:
    """A plan's cells (plan.Cell), each ratio checked: at ratio 1 the grid as it always was (the
    clean row first); each ratio below 1 adds the clean-part row and the attacks at that ratio.
    The clean row has no poison, hence no ratio: it is always its ratio-1 cell."""
    from uebench.plan import Cell, ConfiguredMethod
    ratios = ratios or [FULL]
    for ratio in ratios:
        check_ratio(ratio, n_protected)
    clean_part = ConfiguredMethod("attack", CLEAN_PART, CLEAN_PART, {})
    cells = [] if FULL in ratios else [Cell(attacks[0], d, s) for d in defenses for s in seeds]
    for ratio in sorted(ratios, reverse=True):
        rows = attacks if ratio == FULL else [clean_part] + attacks[1:]
        cells += [Cell(a, d, s, ratio) for a in rows for d in defenses for s in seeds]
    return cells


def draw_seed(split_seed: int, seed: int) -> int:
    return int(content_key({"draw": "poison-ratio", "split_seed": split_seed, "seed": seed}), 16)


def poisoned_indices(n: int, ratio: float, split_seed: int, seed: int) -> torch.Tensor:
    """The sorted indices (into the protected split) of the images a cell at ``ratio`` poisons."""
    generator = torch.Generator().manual_seed(draw_seed(split_seed, seed))
    order = torch.randperm(n, generator=generator)
    return order[:poisoned_count(n, ratio)].sort().values


def leaked_indices(n: int, k: int, split_seed: int, seed: int) -> torch.Tensor:
    """The sorted indices (into the protected split) of the k images whose clean versions leak to
    a defense that is granted pairs (``Defense.leaked_pairs``): a seeded draw of its own."""
    if not 1 <= k <= n:
        raise ValueError(f"{k} leaked pairs asked of a protected split of {n} images; ask for 1..{n}")
    key = int(content_key({"draw": "leaked-pairs", "split_seed": split_seed, "seed": seed}), 16)
    return torch.randperm(n, generator=torch.Generator().manual_seed(key))[:k].sort().values


def indices_sha256(indices: torch.Tensor) -> str:
    """sha256 of the sorted indices written as decimal text, comma separated (``0,3,7``)."""
    return hashlib.sha256(",".join(map(str, indices.tolist())).encode()).hexdigest()


def poison_info(n: int, ratio: float, indices: torch.Tensor) -> dict:
    """What a record keeps about its draw."""
    return {"ratio": ratio, "n_poisoned": len(indices), "n_clean": n - len(indices), "n_protected": n,
            "indices_sha256": indices_sha256(indices), "draw": DRAW}


def ratio_of(record) -> float:
    """The poison ratio a record was made at (1.0 for every record written before ratios existed)."""
    return float((record.poison or {}).get("ratio", FULL))


class TrainingSet(NamedTuple):
    x: torch.Tensor                  # what the victim trains on (through its defense)
    y: torch.Tensor
    clean: torch.Tensor              # the clean version of ``x``, image for image (the figure's first row)
    checked: tuple | None            # (clean, poisoned) images the budget guard checks: the poisoned ones
    poison: dict | None              # the record's ``poison`` (None at ratio 1: the record as before ratios)


def apply_ratio(cell, x_clean: torch.Tensor, x_poison: torch.Tensor | None, y: torch.Tensor,
                split_seed: int) -> TrainingSet:
    """The training set of ``cell`` at its ratio.

    ``x_poison`` is the attack's whole poisoned split (None for the clean and clean-part rows).
    At ratio 1 nothing changes (the poison, or the clean images for the clean row); below 1 an
    attack's cell gets the poison at the drawn indices and the clean images elsewhere, and the
    clean-part row gets only the clean images outside them."""
    n = len(y)
    if cell.ratio == FULL and cell.attack.name != CLEAN_PART:
        if x_poison is None:
            return TrainingSet(x_clean, y, x_clean, None, None)
        return TrainingSet(x_poison, y, x_clean, (x_clean, x_poison), None)
    chosen = poisoned_indices(n, cell.ratio, split_seed, cell.seed)
    info = poison_info(n, cell.ratio, chosen)
    if cell.attack.name == CLEAN_PART:
        keep = torch.ones(n, dtype=torch.bool)
        keep[chosen] = False
        return TrainingSet(x_clean[keep], y[keep], x_clean[keep], None, info)
    if x_poison is None:       # the clean row has no ratio: it is planned at 1 only
        raise ValueError(f"{cell.attack.name} has no poison to mix at ratio {ratio_text(cell.ratio)}")
    x = x_clean.clone()
    x[chosen] = x_poison[chosen]
    return TrainingSet(x, y, x_clean, (x_clean[chosen], x_poison[chosen]), info)
