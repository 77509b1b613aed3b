"""The runner: make every poison set and shared model once, then run every pending cell.

    plan (plan.py) -> stage 1: poison sets (poisons.py) and defense states (cell.py)
                   -> stage 2: cells (cell.py), each writing one record (records.py)

Tasks run in the driver, in local worker processes (one per GPU) or on a Ray cluster
(workers.py). A finished cell is skipped when the same command runs again (resume); a
failing cell is recorded with its error and the others go on.
"""
from __future__ import annotations

import os
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from uebench.cell import Claimed, Unwritable, prepare_defense, run_cell
from uebench.claims import wait_until_free
from uebench.guard import TaskTimeout, method_code
from uebench.job import Job, remember_data
from uebench.plan import Cell, ConfiguredMethod, Plan, RunSpec, cache_dir_of, make_plan, scan_records
from uebench.poisons import craft_poison
from uebench.presets import TableConfig
from uebench.progress import Progress, duration, interactive
from uebench.protocols import get_protocol
from uebench.records import Record
from uebench.registry import UserError
from uebench.backends.ray import import_ray, ray_workers
from uebench.workers import BACKENDS, Task, Workers, local_workers, remove_stale_temp_files, run_tasks, stop


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"bad --device {name!r}: use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but no CUDA GPU is visible; use --device cpu")
    return device



def check_worker_flags(spec: RunSpec) -> None:
    """Fail early, before planning, on bad --jobs, --retries, --backend or --device."""
    if spec.jobs is not None and spec.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {spec.jobs}")
    if spec.retries < 0:
        raise UserError(f"--retries must be >= 0, got {spec.retries}")
    if spec.cell_timeout is not None and not 0 < spec.cell_timeout < float("inf"):
        raise UserError(f"--cell-timeout must be a number of seconds > 0, got {spec.cell_timeout}")
    if spec.backend == "threading":
        raise UserError("--backend threading is not supported: threads share torch's random generator and "
                        "thread count, so cells would not reproduce; use loky (the default) or ray")
    if spec.backend not in BACKENDS:
        raise UserError(f"unknown --backend {spec.backend!r}: use {', '.join(BACKENDS)}")
    if spec.ray_address and spec.backend != "ray":
        raise UserError("--ray-address needs --backend ray")
    if spec.backend == "ray":
        import_ray()
    else:                        # a Ray cluster's devices are checked once connected
        resolve_device(spec.device)


def plan_workers(spec: RunSpec, cell_threads: int | None = None) -> Workers:
    """Where the tasks run: in the driver, in local workers (one per GPU) or on Ray.

    ``cell_threads`` (the table's, when its preset fixes it) overrides the CPU threads each
    task would get from the machine and ``--jobs``: CPU float sums depend on the thread
    count, so a table whose recipe fixes it comes out the same however it is scheduled.
    """
    check_worker_flags(spec)
    if spec.backend == "ray":
        workers = ray_workers(spec.device, spec.jobs, spec.retries, spec.ray_address)
    else:
        device = resolve_device(spec.device)
        workers = local_workers(str(device), spec.jobs, spec.backend, spec.retries,
                                gpus=torch.cuda.device_count() if device.type == "cuda" else 0,
                                cpus=os.cpu_count() or 1)
    return replace(workers, threads=cell_threads) if cell_threads else workers


def _stage1_task(job: Job, fn: Callable, method: ConfiguredMethod, seed: int) -> str | None:
    """Make one poison set or one defense's shared state; return the error, if any, as text
    (the tensors stay in the cache, not in the result)."""
    try:
        with method_code(job.plan_spec.cell_timeout):
            fn(job, method, seed)
        return None
    except (Exception, TaskTimeout) as err:
        return _stage1_error(method, f"{type(err).__name__}: {err}")


def _stage1_error(method: ConfiguredMethod, reason: str) -> str:
    return f"{method.name} failed: {reason}".splitlines()[0][:500]



def run(spec: RunSpec, plan: Plan | None = None, workers: Workers | None = None) -> list[Record]:
    """Run the grid ``spec`` describes; returns the records of the cells run now."""
    plan = plan or make_plan(spec)
    if not plan.pending:           # resuming a finished grid: no workers to start
        return []
    workers = workers or plan_workers(spec, plan.config.cell_threads)
    try:
        return _run(spec, plan, workers)
    finally:
        stop(workers)


def _absolute_paths(spec: RunSpec, config: TableConfig) -> tuple[RunSpec, TableConfig]:
    """The spec and table with absolute paths: a Ray worker runs in a folder of its own (and on
    a cluster every node must see the same paths: a shared file system)."""
    def absolute(path: str | Path) -> Path:
        return Path(path).expanduser().resolve()

    kind, colon, where = config.dataset.partition(":")
    dataset = f"{kind}:{absolute(where)}" if colon and kind in ("npz", "imagefolder") else config.dataset
    spec = replace(spec, results_dir=absolute(spec.results_dir), cache_dir=absolute(cache_dir_of(spec)),
                   data_root=str(absolute(spec.data_root)) if spec.data_root else None,
                   plugins=[str(absolute(p)) if Path(p).is_file() else p for p in spec.plugins])
    return spec, replace(config, dataset=dataset)



def _run(spec: RunSpec, plan: Plan, workers: Workers) -> list[Record]:
    spec, config = _absolute_paths(spec, plan.config)
    # a cell's own bars (epochs, rounds) only where they can be drawn: in the driver, on a terminal
    job = Job(spec, config, plan.table_dir.resolve(), spec.cache_dir, workers.device, workers.threads,
              spec.progress and workers.backend == "inline" and interactive())
    remember_data(job, plan.dataset, plan.splits)
    # temp files of writers killed mid-write: in the folders of cells to run, and in the cache
    cache_folders = [job.cache_dir, *(p for p in job.cache_dir.glob("*") if p.is_dir())]
    remove_stale_temp_files([plan.table_dir, *{c.path(plan.table_dir).parent for c in plan.pending},
                             *cache_folders])

    # Stage 1: every poison set and every defense's shared state, each exactly once.
    poisons, prepares = plan.poison_sets(), plan.shared_models()
    stage1 = [(craft_poison, a, s) for a, s in poisons] + [(prepare_defense, d, s) for d, s in prepares]
    errors: dict[tuple[str, str, int], str] = {}

    if stage1:
        with Progress(len(stage1), "poisons and shared models", spec.progress) as progress:
            def note_error(index: int, error: str | None) -> None:
                fn, method, seed = stage1[index]
                if error:
                    errors[(fn.__name__, method.folder, seed)] = error
                what = "poison set" if fn is craft_poison else "shared state of"
                progress.done(f"{what} {method.folder} seed {seed}: {error or 'ready'}")

            tasks = [Task(_stage1_task, job, (fn, m, s), partial(_stage1_error, m)) for fn, m, s in stage1]
            run_tasks(tasks, workers, note_error)

    # Stage 2: the cells (a cell whose poison or defense state failed is recorded as failed).
    # Cells another run holds are skipped, then waited for: taken as done if it finished
    # them, run here if it died first.
    records: list[Record] = []
    unwritable: list[str] = []
    cells = plan.pending
    while cells:
        claimed: list[Cell] = []

        def take(index: int, result: Record | Claimed | Unwritable) -> None:
            if isinstance(result, Unwritable):      # the other cells then fail to claim theirs, quickly
                unwritable.append(result.reason)
                progress.done(f"{cells[index].relpath}: cannot write its record")
            elif isinstance(result, Claimed):
                claimed.append(cells[index])
                progress.done(f"{cells[index].relpath}: held by another run")
            else:
                records.append(result)
                progress.done(describe(result))

        tasks = []
        for c in cells:
            upstream = (errors.get(("craft_poison", c.attack.folder, c.seed))
                        or errors.get(("prepare_defense", c.defense.folder, c.seed)))
            tasks.append(Task(run_cell, job, (c, upstream), partial(run_cell, job, c), c.path(plan.table_dir)))
        with Progress(len(tasks), "cells", spec.progress) as progress:
            run_tasks(tasks, workers, take)
        if unwritable:
            raise UserError(f"cannot write to the results folder ({unwritable[0]}); make it writable and "
                            f"re-run the same command to resume (finished cells are kept)")
        if claimed:
            print(f"uebench: {len(claimed)} cell(s) held by another run; waiting for them", file=sys.stderr)
            wait_until_free([c.path(plan.table_dir) for c in claimed])
        cells = scan_records(claimed, plan.table_dir)[0]
    return records


def describe(record: Record) -> str:
    """One line for a finished cell: which, what it measured, how long it took."""
    cell = f"{record.attack.folder} × {record.defense.folder} seed {record.seed}"
    seconds = record.timing.get("cell_s", 0.0)
    if record.status == "ok":
        protocol = get_protocol(record.table.protocol)
        return f"{cell}: {protocol.metric} {100 * protocol.value(record.metrics):.1f} % in {duration(seconds)}"
    return f"{cell}: {record.status} ({record.error})"
