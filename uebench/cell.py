"""One cell: load its poison set, train the victim through its defense, evaluate, record.

``run_cell`` runs in a worker under the cell's claim and never raises: a failure becomes a
record with status ``failed`` and the error, and the other cells go on. Every record carries
the full configuration that made it (table, attack, defense, seed, code, device, threads).
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from uebench.api import Attack, Defense, ThreatModel, hparams
from uebench.budget import check_budget, declared_threat_model, measured_budget
from uebench.claims import Claim
from uebench.data import Dataset, Splits, to_tensor
from uebench.guard import TaskTimeout, method_code
from uebench.job import Job, make_context, setup_worker, test_split, worker_data
from uebench.plan import Cell, ConfiguredMethod, finished_as
from uebench.poisons import make_poison
from uebench.protocols import get_protocol
from uebench.ratio import FULL, apply_ratio, indices_sha256, leaked_indices
from uebench.records import (AttackInfo, DefenseInfo, Record, TableInfo, ThreatModelInfo, git_commit,
                             read_record, write_record)
from uebench import __version__

FIGURE = "examples.png"


@dataclass(frozen=True)
class Claimed:
    """A cell's result when another process holds it: not a record."""
    holder: dict


def prepare_defense(job: Job, defense: ConfiguredMethod, seed: int) -> None:
    """Stage 1's defense task: build the defense's shared state (a diffusion model, say) from
    the clean reference split, once, before the cells that use it."""
    setup_worker(job)
    dataset, splits = worker_data(job)
    reference = (to_tensor(dataset.x_train[splits.reference]), torch.from_numpy(dataset.y_train[splits.reference]))
    defense.instance.prepare(reference, make_context(job, dataset, seed))


@dataclass(frozen=True)
class Unwritable:
    """A cell's result when its claim or record cannot be written (the results folder was made
    read-only or removed during the run): the run stops, the finished cells stay."""
    reason: str


def run_cell(job: Job, cell: Cell, upstream_error: str | None = None) -> Record | Claimed | Unwritable:
    """Run one cell under its claim and return its record; when another process holds the
    cell, return :class:`Claimed` instead (nothing is written)."""
    path = cell.path(job.table_dir)
    claim = Claim(path)
    try:
        holder = claim.acquire()
    except OSError as err:
        return Unwritable(f"{path.parent}: {err.strerror or err}")
    if holder is not None:
        return Claimed(holder)
    try:
        done = None if job.plan_spec.force else read_record(path)
        if done is not None and finished_as(done, cell):      # another run finished it since we planned
            return done
        return compute_cell(job, cell, upstream_error)
    finally:
        claim.release()


def failed_record(cell: Cell, error: str) -> Record:
    """The record of a cell that failed before (or without) being described."""
    return Record(status="failed", seed=cell.seed, error=error, warnings=list(cell.attack.warnings),
                  poison=ratio_stub(cell), attack=AttackInfo(cell.attack.name, cell.attack.folder),
                  defense=DefenseInfo(cell.defense.name, cell.defense.folder))


def ratio_stub(cell: Cell) -> dict | None:
    """The record's ``poison`` until the cell draws its indices: its ratio (None at ratio 1)."""
    return None if cell.ratio == FULL else {"ratio": cell.ratio}


def compute_cell(job: Job, cell: Cell, upstream_error: str | None = None) -> Record | Unwritable:
    """Run one cell and write its record. Never raises: a failure becomes the record."""
    start = time.perf_counter()
    record = failed_record(cell, error=None)     # who the cell is, even if describing it fails
    path = cell.path(job.table_dir)
    try:
        setup_worker(job)
        dataset, splits = worker_data(job)
        record = describe_cell(job, cell, dataset, splits)
        with method_code(job.plan_spec.cell_timeout):
            _compute(job, cell, dataset, splits, record, upstream_error)
    except (Exception, TaskTimeout) as err:  # the cell fails, the run goes on
        record.status = "failed"
        record.error = f"{type(err).__name__}: {err}".splitlines()[0][:500]
        record.traceback = traceback.format_exc()[-4000:]
    return finish(path, record, start)


def _compute(job: Job, cell: Cell, dataset: Dataset, splits: Splits, record: Record,
             upstream_error: str | None) -> None:
    """The cell's work: poison, defense, evaluation, written into ``record``."""
    path = cell.path(job.table_dir)
    defense: Defense = cell.defense.instance
    if job.config.protocol not in defense.protocols:
        record.status = "not-applicable"
        record.error = f"{cell.defense.name} changes {'/'.join(defense.protocols)} training only"
        return
    if upstream_error:
        raise RuntimeError(upstream_error)
    x_clean = to_tensor(dataset.x_train[splits.protected])
    y = torch.from_numpy(dataset.y_train[splits.protected])
    x_poison = None
    if cell.attack.instance is not None:       # crafted on the whole protected split, once per (attack, seed)
        entry = make_poison(job, cell.attack, cell.seed)
        x_poison = entry["x"]
        record.timing["poison_s"] = round(entry["seconds"], 2)
        record.notes["attack"] = entry["notes"]
    # the poison at the cell's ratio: poisoned images at the drawn indices, clean ones elsewhere
    train = apply_ratio(cell, x_clean, x_poison, y, job.config.split_seed)
    x, y, x_clean, record.poison = train.x, train.y, train.clean, train.poison
    if train.checked is not None:              # the budget guard checks the poisoned images
        threat = declared_threat_model(cell.attack.instance, dataset.image_shape)
        check_budget(*train.checked, threat, released=record.notes["attack"].get("released_as"))
        record.budget = measured_budget(*train.checked, threat)
        if record.budget["linf_max"] == 0:
            record.warnings.append(f"the poison of {cell.attack.name} equals the clean images (L∞ 0): "
                                   f"this row measures clean data")
    reference = (to_tensor(dataset.x_train[splits.reference]), torch.from_numpy(dataset.y_train[splits.reference]))
    ctx = make_context(job, dataset, cell.seed, artifact_dir=path.with_suffix(""))
    k = defense.leaked_pairs()                 # what the defense's threat model grants it: k (clean, protected) pairs
    if k:
        leaked = leaked_indices(len(y), k, job.config.split_seed, cell.seed)
        ctx.leaked_pairs = (x_clean[leaked].clone(), x[leaked].clone())
        record.notes["leaked_pairs"] = {"k": k, "indices_sha256": indices_sha256(leaked),
                                        "draw": "the first k of a torch.randperm of the protected split"}
    torch.manual_seed(cell.seed)
    protocol = get_protocol(job.config.protocol)   # what the cell measures (protocols/)
    # the test split is read only inside measure, after the defense's code has run
    record.metrics, fit_s = protocol.measure(defense, x, y, x_clean, reference, ctx, lambda: test_split(job))
    record.timing["fit_s"] = round(fit_s, 2)
    if ctx.previews:
        ctx.notes["figure"] = save_figure(path.with_suffix(""), [x_clean, x, *ctx.previews.values()])
    record.notes["defense"] = dict(ctx.notes)
    record.status = "ok"


def save_figure(folder: Path, rows: list[torch.Tensor]) -> str:
    """One row of images per tensor (clean, unlearnable, then the defense's previews), as
    many columns as the shortest row; returns the file name, relative to ``folder``."""
    from torchvision.utils import save_image
    n = min(len(r) for r in rows)
    folder.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat([r[:n].cpu() for r in rows]), folder / FIGURE, nrow=n, padding=1)
    return FIGURE


def finish(path: Path, record: Record, start: float) -> Record | Unwritable:
    record.timing["cell_s"] = round(time.perf_counter() - start, 2)
    record.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        write_record(path, record)
    except OSError as err:
        return Unwritable(f"{path}: {err.strerror or err}")
    return record


def describe_cell(job: Job, cell: Cell, dataset: Dataset, splits: Splits) -> Record:
    """The record of ``cell`` before it runs: everything about how it is made."""
    cfg = job.config
    attack: Attack | None = cell.attack.instance
    defense: Defense = cell.defense.instance
    threat = declared_threat_model(attack, dataset.image_shape) if attack else ThreatModel("none", 0.0)
    return Record(
        status="failed", seed=cell.seed, error=None, warnings=list(cell.attack.warnings), poison=ratio_stub(cell),
        uebench_version=__version__, git_commit=git_commit(),
        table=TableInfo(id=job.table_dir.name, preset=cfg.preset, protocol=cfg.protocol, model=cfg.model,
                        dataset={**dataset.identity(), "source": dataset.source}, train=cfg.train.as_dict(),
                        split={"n_protected": len(splits.protected), "n_reference": len(splits.reference),
                               "n_test": dataset.n_test, "split_seed": cfg.split_seed},
                        contrastive=get_protocol(cfg.protocol).settings(cfg), surrogate=cfg.surrogate),
        attack=AttackInfo(name=cell.attack.name, folder=cell.attack.folder,
                          hparams=hparams(attack) if attack else {}, code=cell.attack.code,
                          threat_model=ThreatModelInfo(threat.norm, threat.eps, str(threat)),
                          target=attack.target if attack else None, paper=attack.describe() if attack else ""),
        defense=DefenseInfo(name=cell.defense.name, folder=cell.defense.folder, hparams=hparams(defense),
                            code=cell.defense.code, paper=defense.describe(), protocols=list(defense.protocols),
                            transforms_test=defense.transforms_test),
        device=job.device,
        threads=torch.get_num_threads(),   # CPU sums reorder with it: about half a point on a 15-epoch cell
    )
