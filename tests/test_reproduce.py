"""The committed `cpu` table reproduces (slow): chosen cells recomputed from scratch give the
committed numbers.

CI checks the evidence claims against the committed records (``UEBENCH_EVIDENCE_DIR`` on a
copy of ``results/``, see conftest.py), because recomputing every cell they read takes about
two hours on 2 cores and CI has 90 minutes. This file closes the gap: it recomputes one
cell of each kind the claims rest on, in a fresh folder, and requires the committed test
accuracy. Two runs on one machine at one thread count are bit-identical; the records were
written in earlier sessions (other machines, older commits), and against them a rerun differs
by 0.5-3 points (measured on 2026-11-30 for these eight cells). The tolerance, three points
(twelve for EM under grayscale, see CELL_TOLERANCE), is for a CPU with other kernels: a change
in float rounding sends training down another trajectory, which moves a poisoned cell by about
as much as another seed would; a broken attack, defense or preset moves it by far more.

The cells (about 40 minutes on these 2 cores): the clean row, a model-free shortcut (LSP),
class-wise noise, sample-wise EM (the poison every defense claim uses) under no defense,
grayscale and adversarial training, TAP under JPEG (its surrogate and poison), and NTGA.
Not recomputed in CI: REM (its poison alone takes 5–9 minutes) and the LE/AVATAR cells
(diffusion model 6–12 minutes, each LE cell 10–20); ``python -m pytest -m slow
tests/test_evidence_*.py`` without ``UEBENCH_EVIDENCE_DIR`` recomputes everything.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import cell_runner
from uebench.records import Record, hparams_as_made, read_record

pytestmark = pytest.mark.slow

COMMITTED = Path(__file__).resolve().parents[1] / "results"
TOLERANCE = 0.03          # three points of clean test accuracy (60 of the 2,000 test images)
# Sample-wise EM under grayscale sits between learning the poison and learning the images, and
# any change of rounding can tip it: with the signed export seeds 0, 1, 2 gave 40.9, 53.1 and
# 35.0 (no defense: 21.3, 26.2, 19.8); with the official export two runs here gave 64.35 and
# 64.3. Twelve points fail a grayscale that does nothing (the cell falls to EM's 19-26) or an
# EM that does nothing (70-72).
# EM's poison itself comes out of six rounds of alternating surrogate training and noise
# steps, which carry a rounding difference further than one training run does: its cells get
# five points (a broken EM lands at the clean row, 50 points away; under AT at AT's own 49.5).
CELL_TOLERANCE = {("em", "iss-gray"): 0.12, ("em", "none"): 0.05, ("em", "at"): 0.05}

CELLS = [                 # (attack, defense), each recomputed from scratch
    ("clean", "none"),
    ("lsp", "none"),
    ("classwise-noise", "none"),
    ("em", "none"),
    ("em", "iss-gray"),
    ("em", "at"),
    ("tap", "iss-jpeg"),
    ("ntga", "none"),
]


@pytest.fixture(scope="module")
def recomputed(tmp_path_factory):
    run_cells = cell_runner(tmp_path_factory.mktemp("reproduce"))
    attacks = sorted({a for a, _ in CELLS})
    defenses = sorted({d for _, d in CELLS})
    return run_cells(attacks, defenses, cells=CELLS)


def committed_record(record: Record, attack: str, defense: str) -> Record | None:
    """The committed record of the same cell, or None when it is missing or fails its checksum."""
    table = COMMITTED / record.table.dataset["name"] / record.table.id
    return read_record(table / attack / defense / f"seed{record.seed}.json")


@pytest.mark.parametrize("attack,defense", CELLS, ids=[f"{a}-{d}" for a, d in CELLS])
def test_committed_cell_reproduces(recomputed, attack, defense):
    fresh = recomputed[(attack, defense)]
    committed = committed_record(fresh, attack, defense)
    assert committed is not None, (
        f"no valid committed record for {attack} × {defense} in table {fresh.table.id}: the `cpu` "
        "preset's configuration changed since the table was committed (re-run the table)")
    # An older record lacks hyperparameters added since; it was made with their ADDED_HPARAMS value.
    for kind in ("attack", "defense"):
        made_by, now = getattr(committed, kind), getattr(fresh, kind)
        assert now.hparams == hparams_as_made(made_by.name, made_by.hparams), \
            f"{kind} of {attack} × {defense} was made otherwise"
    got, want = fresh.metrics.test_acc, committed.metrics.test_acc
    tolerance = CELL_TOLERANCE.get((attack, defense), TOLERANCE)
    n_test = committed.metrics.n_test    # compared in whole test images, free of float rounding
    assert abs(round(got * n_test) - round(want * n_test)) <= round(tolerance * n_test), (
        f"{attack} × {defense}: recomputed {got:.4f}, committed {want:.4f} (tolerance {tolerance})")
