"""The runner: plan the grid, make each poison set once, run every cell, write records.

The plan is (attacks + the clean row) × (defenses + the no-defense column) × seeds.
Stage 1 makes every poison set the pending cells need (cached by content key) and lets
each defense build its shared state from the reference split (``Defense.prepare``).
Stage 2 runs the cells; each writes one record atomically. A finished cell is skipped
when the same command runs again (resume); a failing cell is recorded with its error
and the others go on.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from uebench.api import Attack, Defense, ThreatModel, hparams, typed_hparams
from uebench.budget import budget_warning, check_budget, declared_threat_model
from uebench.claims import Claim, wait_until_free
from uebench.context import Context, atomic_torch_save, code_fingerprint, content_key
from uebench.data import Dataset, Splits, load_dataset, make_splits, to_tensor
from uebench.presets import TableConfig, table_config
from uebench.records import FINISHED, hparams_as_made, provenance, read_record, write_record
from uebench.registry import ATTACKS, DEFENSES, UserError, load_plugin
from uebench.train import accuracy
from uebench.workers import (BACKENDS, Task, Workers, import_ray, local_workers, ray_workers,
                             remove_stale_temp_files, run_tasks, stop)

CLEAN = "clean"   # the row without an attack
NONE = "none"     # the column without a defense


@dataclass
class RunSpec:
    """Everything one ``uebench run`` command says."""

    attacks: str | list[str] = "all"
    defenses: str | list[str] = "all"
    preset: str = "demo"
    dataset: str | None = None
    seeds: list[int] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)       # TableConfig / TrainConfig fields
    attack_params: dict[str, dict] = field(default_factory=dict)  # {"em": {"rounds": 5}}
    defense_params: dict[str, dict] = field(default_factory=dict)
    results_dir: Path = Path("results")
    cache_dir: Path | None = None                                 # default: <results_dir>/.cache
    data_root: str | None = None
    download: bool = False
    device: str = "auto"
    jobs: int | None = None                                       # default: 1, or one per GPU / Ray slot
    backend: str = "loky"                                         # loky | threading | ray
    retries: int = 2                                              # reruns of a task whose worker died
    ray_address: str | None = None                                # None: start a local Ray instance
    force: bool = False
    progress: bool = True
    plugins: list[str] = field(default_factory=list)


@dataclass(eq=False)   # one object per configured method; hashed by identity
class Method:
    """A configured attack or defense, picklable without its class: workers rebuild the
    instance from the registry after loading plugins (a file plugin's class cannot be
    unpickled before that)."""

    kind: str            # "attack" | "defense"
    name: str
    folder: str          # name, or name@<hash> when run with non-preset hyperparameters
    params: dict         # the full hyperparameters
    _instance: Any = field(default=None, repr=False)
    code: str = ""       # fingerprint of the class's source and uebench's version (clean row: none)
    warnings: list[str] = field(default_factory=list)   # implausible settings, for the output and records

    @property
    def instance(self) -> Any:
        """The Attack / Defense object (None for the clean row)."""
        if self._instance is None and self.name != CLEAN:
            registry = ATTACKS if self.kind == "attack" else DEFENSES
            self._instance = registry.get(self.name)(**self.params)
        return self._instance

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_instance": None}


@dataclass(frozen=True)
class Cell:
    attack: Method
    defense: Method
    seed: int

    def path(self, table_dir: Path) -> Path:
        return table_dir / self.relpath

    @property
    def relpath(self) -> str:
        return f"{self.attack.folder}/{self.defense.folder}/seed{self.seed}.json"

    @property
    def params_key(self) -> str:
        """The hyperparameters this cell runs with; a record made with others is stale."""
        return params_key(self.attack.params, self.defense.params)


def params_key(attack_params: dict, defense_params: dict) -> str:
    return content_key({"attack": attack_params, "defense": defense_params})


@dataclass
class Plan:
    spec: RunSpec
    config: TableConfig
    dataset: Dataset
    splits: Splits
    table_id: str
    table_dir: Path
    cells: list[Cell]
    pending: list[Cell]
    corrupt: list[Path] = field(default_factory=list)              # records found truncated or tampered with


# -- planning --------------------------------------------------------------------------

def _names(spec: str | list[str]) -> str:
    return ",".join(spec) if isinstance(spec, (list, tuple)) else spec


NOMINAL_SHAPE = (3, 32, 32)   # an image shape for checking that a threat model builds


def configure(registry, name: str, preset: str, params: dict) -> Method:
    """Instantiate a method with its preset's and the user's hyperparameters, checking the
    user's values before any work: their types, finite floats, the method's own
    ``__post_init__`` ranges and, for an attack, that its threat model builds (eps >= 0)."""
    cls = registry.get(name)
    given = ", ".join(f"{k}={v!r}" for k, v in params.items())
    try:
        instance = cls.for_preset(preset, **typed_hparams(cls, params))
        if registry.kind == "attack":
            declared_threat_model(instance, NOMINAL_SHAPE)
    except (TypeError, ValueError) as err:
        raise UserError(f"bad hyperparameters for {registry.kind} {name} ({given}): {err}") from err
    folder = name
    if params and hparams(instance) != hparams(cls.for_preset(preset)):
        folder = f"{name}@{content_key(hparams(instance))[:6]}"
    return Method(registry.kind, name, folder, hparams(instance), instance, code_fingerprint(cls))


def table_identity(cfg: TableConfig, dataset: Dataset) -> tuple[str, dict]:
    """A readable id for the table plus everything it hashes: records of different
    protocols, models, training recipes or splits never share a table."""
    ident = {"dataset": dataset.identity(), "protocol": cfg.protocol, "model": cfg.model,
             "train": cfg.train.as_dict(), "n_reference": cfg.n_reference, "n_protected": cfg.n_protected,
             "split_seed": cfg.split_seed,
             "contrastive": cfg.contrastive if cfg.protocol == "contrastive" else {}}
    if cfg.cell_threads is not None:   # absent from the tables made before it was a recipe field
        ident["cell_threads"] = cfg.cell_threads
    return f"{cfg.protocol}-{cfg.model}-{cfg.train.epochs}ep-{content_key(ident)[:6]}", ident


def make_plan(spec: RunSpec) -> Plan:
    """Resolve names, load data, and list the cells, failing early on any bad input."""
    for plugin in spec.plugins:
        load_plugin(plugin)
    overrides = dict(spec.overrides)
    if spec.dataset:
        overrides["dataset"] = spec.dataset
    if spec.seeds:
        overrides["seeds"] = tuple(spec.seeds)
    cfg = table_config(spec.preset, **overrides)

    attack_names = ATTACKS.select(_names(spec.attacks))
    defense_names = DEFENSES.select(_names(spec.defenses))
    for kind, given, known in (("attack", spec.attack_params, attack_names),
                               ("defense", spec.defense_params, defense_names)):
        stray = set(given) - set(known)
        if stray:
            raise UserError(f"hyperparameters given for {kind} {', '.join(sorted(stray))}, which is not selected")
    attacks = [Method("attack", CLEAN, CLEAN, {})] + [
        configure(ATTACKS, n, cfg.preset, spec.attack_params.get(n, {})) for n in attack_names if n != CLEAN]
    defenses = [configure(DEFENSES, d, cfg.preset, spec.defense_params.get(d, {}))
                for d in dict.fromkeys([NONE] + defense_names)]

    dataset = load_dataset(cfg.dataset, spec.data_root, spec.download, cfg.train_subset, cfg.test_subset,
                           cfg.split_seed)
    dataset.check_every_class_trained()
    need = cfg.n_reference + (cfg.n_protected or 1)
    if need > len(dataset.y_train):
        raise UserError(f"{dataset.name} has {len(dataset.y_train)} training images; the split needs {need} "
                        f"(--n-reference {cfg.n_reference}, --n-protected {cfg.n_protected})")
    splits = make_splits(dataset.y_train, cfg.n_reference, cfg.n_protected, cfg.split_seed)
    for attack in attacks[1:]:
        attack.warnings = budget_warnings(attack, dataset.image_shape)
    results_dir = Path(spec.results_dir)
    check_writable(results_dir)      # makes the folder: only once the input is known to be good
    table_id, _ = table_identity(cfg, dataset)
    table_dir = results_dir / dataset.name / table_id
    cells = [Cell(a, d, s) for a in attacks for d in defenses for s in cfg.seeds]
    pending, corrupt = (cells, []) if spec.force else scan_records(cells, table_dir)
    return Plan(spec, cfg, dataset, splits, table_id, table_dir, cells, pending, corrupt)


def budget_warnings(attack: Method, image_shape: tuple[int, int, int]) -> list[str]:
    """A warning when the attack's budget for these images is far above the field's norms."""
    try:
        warning = budget_warning(declared_threat_model(attack.instance, image_shape))
    except (TypeError, ValueError) as err:
        raise UserError(f"attack {attack.folder} has no valid threat model for images {image_shape}: {err}") from err
    return [warning] if warning else []


def cache_dir_of(spec: RunSpec) -> Path:
    return Path(spec.cache_dir or Path(spec.results_dir) / ".cache")


def pending_cells(cells: list[Cell], table_dir: Path) -> list[Cell]:
    """The cells without a finished record (missing, failed, stale, truncated or corrupt: redone)."""
    return scan_records(cells, table_dir)[0]


def scan_records(cells: list[Cell], table_dir: Path) -> tuple[list[Cell], list[Path]]:
    """The pending cells, and the corrupt records among them.

    Every record is read and its checksum verified (records are small: a 10,100-cell grid
    scans in half a second), so a record edited in place is redone even when its size and
    time were kept. A record counts as finished when it is intact, its status is final and it
    was made with the hyperparameters and the code the cell has now (else it is stale).
    """
    pending, corrupt = [], []
    for cell in cells:
        path = cell.path(table_dir)
        record = read_record(path)
        if record is None and path.exists():
            corrupt.append(path)
        if record is None or not finished_as(record, cell):
            pending.append(cell)
    return pending, corrupt


def finished_as(record: dict, cell: Cell) -> bool:
    """Whether ``record`` is a final result of ``cell`` as it is configured and coded now."""
    if record.get("status") not in FINISHED:
        return False
    attack, defense = record.get("attack", {}), record.get("defense", {})
    made_with = params_key(hparams_as_made(attack.get("name", ""), attack.get("hparams", {})),
                           hparams_as_made(defense.get("name", ""), defense.get("hparams", {})))
    if made_with != cell.params_key:
        return False
    # Legacy records, schema 1, are trusted: written before records carried the fingerprint of
    # their code (every committed record), they stay finished; a fingerprint that differs is stale.
    return all(part.get("code") in (None, method.code) for part, method in ((attack, cell.attack),
                                                                             (defense, cell.defense)))


def check_writable(directory: Path, what: str = "results directory", flag: str = "--results-dir") -> None:
    """Make ``directory`` and check that a file can be written there; ``what`` and ``flag`` name
    it in the error (the results directory, or the leaderboard's folder)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write to {what} {directory} ({err.strerror}); "
                        f"pass {flag} to a writable folder") from err


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


# -- the work of one process -----------------------------------------------------------

@dataclass
class Job:
    """What a worker needs to make a poison set or run a cell (picklable)."""

    plan_spec: RunSpec
    config: TableConfig
    table_dir: Path
    cache_dir: Path
    device: str
    threads: int
    progress: bool
    slot: int | None = None    # the local worker slot (one per GPU) the task holds, if any


_DATA: dict[tuple, tuple[Dataset, Splits]] = {}


def _data(job: Job) -> tuple[Dataset, Splits]:
    """Load the dataset once per worker process."""
    cfg = job.config
    key = (cfg.dataset, job.plan_spec.data_root, cfg.train_subset, cfg.test_subset, cfg.n_reference,
           cfg.n_protected, cfg.split_seed)
    if key not in _DATA:
        ds = load_dataset(cfg.dataset, job.plan_spec.data_root, False, cfg.train_subset, cfg.test_subset,
                          cfg.split_seed)
        _DATA[key] = (ds, make_splits(ds.y_train, cfg.n_reference, cfg.n_protected, cfg.split_seed))
    return _DATA[key]


def _setup_worker(job: Job) -> None:
    torch.set_num_threads(job.threads)
    for plugin in job.plan_spec.plugins:   # file plugins must be imported in every worker
        load_plugin(plugin)


def make_context(job: Job, dataset: Dataset, seed: int, artifact_dir: Path | None = None) -> Context:
    cfg = job.config
    ctx = Context(device=torch.device(job.device), seed=seed, num_classes=dataset.num_classes,
                  image_shape=dataset.image_shape, model=cfg.model, train=cfg.train, protocol=cfg.protocol,
                  dataset={**dataset.identity(), "n_reference": cfg.n_reference, "n_protected": cfg.n_protected,
                           "split_seed": cfg.split_seed},
                  cache_dir=job.cache_dir, artifact_dir=artifact_dir, progress=job.progress)
    if cfg.protocol == "contrastive":
        ctx.notes["contrastive"] = dict(cfg.contrastive)
    return ctx


def poison_path(job: Job, attack: Method, seed: int, dataset: Dataset) -> Path:
    key = {"attack": attack.name, "hparams": hparams(attack.instance), "dataset": dataset.identity(),
           "n_reference": job.config.n_reference, "n_protected": job.config.n_protected,
           "split_seed": job.config.split_seed, "seed": seed, "model": job.config.model,
           "code": attack.code}
    return job.cache_dir / "poisons" / f"{attack.name}-{content_key(key)}.pt"


def make_poison(job: Job, attack: Method, seed: int, remake: bool = False) -> dict:
    """Generate (or load) one poison set; returns {"x", "seconds", "notes"}. ``remake``
    generates it even when it is cached (``--force``)."""
    _setup_worker(job)
    dataset, splits = _data(job)
    path = poison_path(job, attack, seed, dataset)
    cached = None if remake else _cached_poison(path)
    if cached is not None:
        return cached
    claim = Claim(path)
    while claim.acquire() is not None:      # another run is making this very poison: use its file
        time.sleep(1)
    try:
        cached = None if remake else _cached_poison(path)
        if cached is not None:
            return cached
        x = to_tensor(dataset.x_train[splits.protected])
        y = torch.from_numpy(dataset.y_train[splits.protected])
        ctx = make_context(job, dataset, seed)
        ctx.notes["train_indices"] = torch.from_numpy(splits.protected)
        start = time.perf_counter()
        poisoned = attack.instance(x, y, ctx)
        ctx.notes.pop("train_indices")
        entry = {"x": poisoned, "seconds": time.perf_counter() - start, "notes": ctx.notes}
        atomic_torch_save(entry, path)
        return entry
    finally:
        claim.release()


def _cached_poison(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        path.unlink(missing_ok=True)     # half-written or corrupt: make it again
        return None


def craft_poison(job: Job, attack: Method, seed: int) -> None:
    """Stage 1's poison task: make the poison set (again, under ``--force``) for the cells to load."""
    make_poison(job, attack, seed, remake=job.plan_spec.force)


def prepare_defense(job: Job, defense: Method, seed: int) -> None:
    _setup_worker(job)
    dataset, splits = _data(job)
    reference = (to_tensor(dataset.x_train[splits.reference]), torch.from_numpy(dataset.y_train[splits.reference]))
    defense.instance.prepare(reference, make_context(job, dataset, seed))


def perturbation_stats(clean: torch.Tensor, poisoned: torch.Tensor) -> dict[str, float]:
    delta = (poisoned - clean).flatten(1)
    changed = ((poisoned - clean).abs().amax(1) > 0).flatten(1).sum(1)   # pixel positions
    return {"linf_max": float(delta.abs().max()) if delta.numel() else 0.0,
            "l2_max": float(delta.norm(dim=1).max()) if delta.numel() else 0.0,
            "l0_max": int(changed.max()) if changed.numel() else 0}


CLAIMED = "claimed"    # a cell's result when another process holds it: not a record


def run_cell(job: Job, cell: Cell, upstream_error: str | None = None) -> dict:
    """Run one cell under its claim and return its record; when another process holds the cell,
    return ``{"status": CLAIMED, "holder": ...}`` instead (nothing is written)."""
    path = cell.path(job.table_dir)
    claim = Claim(path)
    holder = claim.acquire()
    if holder is not None:
        return {"status": CLAIMED, "holder": holder}
    try:
        done = None if job.plan_spec.force else read_record(path)
        if done is not None and finished_as(done, cell):      # another run finished it since we planned
            return done
        return compute_cell(job, cell, upstream_error)
    finally:
        claim.release()


def compute_cell(job: Job, cell: Cell, upstream_error: str | None = None) -> dict:
    """Run one cell and write its record. Never raises: a failure becomes the record."""
    start = time.perf_counter()
    record: dict[str, Any] = {"status": "failed", "error": None, "metrics": {}, "budget": {}, "notes": {},
                              "timing": {}, "seed": cell.seed,   # who the cell is, even if describing it fails
                              "attack": {"name": cell.attack.name, "folder": cell.attack.folder},
                              "defense": {"name": cell.defense.name, "folder": cell.defense.folder},
                              "warnings": list(cell.attack.warnings)}
    path = cell.path(job.table_dir)
    try:
        _setup_worker(job)
        dataset, splits = _data(job)
        record.update(describe_cell(job, cell, dataset, splits))
        defense: Defense = cell.defense.instance
        if job.config.protocol not in defense.protocols:
            record.update(status="not-applicable",
                          error=f"{cell.defense.name} changes {'/'.join(defense.protocols)} training only")
            return _finish(path, record, start)
        if upstream_error:
            raise RuntimeError(upstream_error)
        x_clean = to_tensor(dataset.x_train[splits.protected])
        y = torch.from_numpy(dataset.y_train[splits.protected])
        x = x_clean
        if cell.attack.instance is not None:
            entry = make_poison(job, cell.attack, cell.seed)
            x = entry["x"]
            record["timing"]["poison_s"] = round(entry["seconds"], 2)
            record["notes"]["attack"] = entry["notes"]
            check_budget(x_clean, x, declared_threat_model(cell.attack.instance, dataset.image_shape))
            record["budget"] = perturbation_stats(x_clean, x)
            if record["budget"]["linf_max"] == 0:
                record["warnings"].append(f"the poison of {cell.attack.name} equals the clean images (L∞ 0): "
                                          f"this row measures clean data")
        reference = (to_tensor(dataset.x_train[splits.reference]), torch.from_numpy(dataset.y_train[splits.reference]))
        ctx = make_context(job, dataset, cell.seed, artifact_dir=path.with_suffix(""))
        torch.manual_seed(cell.seed)
        fit_start = time.perf_counter()
        model = defense.fit(x, y, reference, ctx)
        record["timing"]["fit_s"] = round(time.perf_counter() - fit_start, 2)
        transform = defense.transform_test if defense.transforms_test else None
        x_test, y_test = to_tensor(dataset.x_test), torch.from_numpy(dataset.y_test)
        record["metrics"] = {"test_acc": accuracy(model, x_test, y_test, transform=transform),
                             "train_acc": accuracy(model, x, y), "n_test": len(y_test), "n_train": len(y)}
        if ctx.previews:
            ctx.notes["figure"] = save_figure(path.with_suffix(""), [x_clean, x, *ctx.previews.values()])
        record["notes"]["defense"] = {k: v for k, v in ctx.notes.items() if k != "contrastive"}
        record.update(status="ok")
    except Exception as err:  # the cell fails, the run goes on
        record.update(status="failed", error=f"{type(err).__name__}: {err}".splitlines()[0][:500],
                      traceback=traceback.format_exc()[-4000:])
    return _finish(path, record, start)


FIGURE = "examples.png"


def save_figure(folder: Path, rows: list[torch.Tensor]) -> str:
    """One row of images per tensor (clean, unlearnable, then the defense's previews), as
    many columns as the shortest row; returns the file name, relative to ``folder``."""
    from torchvision.utils import save_image
    n = min(len(r) for r in rows)
    folder.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat([r[:n].cpu() for r in rows]), folder / FIGURE, nrow=n, padding=1)
    return FIGURE


def _finish(path: Path, record: dict, start: float) -> dict:
    record["timing"]["cell_s"] = round(time.perf_counter() - start, 2)
    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        write_record(path, record)
    except OSError as err:
        record.update(status="failed", error=f"could not write record {path}: {err}")
    return record


def describe_cell(job: Job, cell: Cell, dataset: Dataset, splits: Splits) -> dict:
    cfg = job.config
    attack: Attack | None = cell.attack.instance
    defense: Defense = cell.defense.instance
    threat = declared_threat_model(attack, dataset.image_shape) if attack else ThreatModel("none", 0.0)
    return {
        **provenance(),
        "table": {"id": job.table_dir.name, "preset": cfg.preset, "protocol": cfg.protocol, "model": cfg.model,
                  "dataset": {**dataset.identity(), "source": dataset.source}, "train": cfg.train.as_dict(),
                  "split": {"n_protected": len(splits.protected), "n_reference": len(splits.reference),
                            "n_test": len(dataset.y_test), "split_seed": cfg.split_seed},
                  "contrastive": cfg.contrastive if cfg.protocol == "contrastive" else {}},
        "attack": {"name": cell.attack.name, "folder": cell.attack.folder,
                   "hparams": hparams(attack) if attack else {}, "code": cell.attack.code,
                   "threat_model": {"norm": threat.norm, "eps": threat.eps, "text": str(threat)},
                   "target": attack.target if attack else None, "paper": attack.describe() if attack else ""},
        "defense": {"name": cell.defense.name, "folder": cell.defense.folder, "hparams": hparams(defense),
                    "code": cell.defense.code,
                    "paper": defense.describe(), "protocols": list(defense.protocols),
                    "transforms_test": defense.transforms_test},
        "seed": cell.seed,
        "device": job.device,
        "threads": torch.get_num_threads(),   # CPU sums reorder with it: about half a point on a 15-epoch cell
    }


# -- orchestration ---------------------------------------------------------------------

def check_worker_flags(spec: RunSpec) -> None:
    """Fail early, before planning, on bad --jobs, --retries, --backend or --device."""
    if spec.jobs is not None and spec.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {spec.jobs}")
    if spec.retries < 0:
        raise UserError(f"--retries must be >= 0, got {spec.retries}")
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


def _stage1_task(job: Job, fn: Callable, method: Method, seed: int) -> str | None:
    """Make one poison set or one defense's shared state; return the error, if any, as text
    (the tensors stay in the cache, not in the result)."""
    try:
        fn(job, method, seed)
        return None
    except Exception as err:
        return _stage1_error(method, f"{type(err).__name__}: {err}")


def _stage1_error(method: Method, reason: str) -> str:
    return f"{method.name} failed: {reason}".splitlines()[0][:500]


def run(spec: RunSpec, plan: Plan | None = None, workers: Workers | None = None) -> list[dict]:
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


def _run(spec: RunSpec, plan: Plan, workers: Workers) -> list[dict]:
    spec, config = _absolute_paths(spec, plan.config)
    job = Job(spec, config, plan.table_dir.resolve(), spec.cache_dir,
              workers.device, workers.threads, spec.progress and workers.backend == "inline")
    _DATA[(config.dataset, spec.data_root, config.train_subset, config.test_subset,
           config.n_reference, config.n_protected, config.split_seed)] = (plan.dataset, plan.splits)
    # temp files of writers killed mid-write: in the folders of cells to run, and in the cache
    cache_folders = [job.cache_dir, *(p for p in job.cache_dir.glob("*") if p.is_dir())]
    remove_stale_temp_files([plan.table_dir, *{c.path(plan.table_dir).parent for c in plan.pending},
                             *cache_folders])

    # Stage 1: every poison set and every defense's shared state, each exactly once.
    poisons = sorted({(c.attack, c.seed) for c in plan.pending if c.attack.name != CLEAN},
                     key=lambda p: (p[0].folder, p[1]))
    applicable = [c for c in plan.pending if plan.config.protocol in c.defense.instance.protocols]
    prepares = sorted({(c.defense, c.seed) for c in applicable
                       if type(c.defense.instance).prepare is not Defense.prepare},
                      key=lambda p: (p[0].folder, p[1]))
    stage1 = [(craft_poison, a, s) for a, s in poisons] + [(prepare_defense, d, s) for d, s in prepares]
    errors: dict[tuple[str, str, int], str] = {}

    def note_error(index: int, error: str | None) -> None:
        fn, method, seed = stage1[index]
        if error:
            errors[(fn.__name__, method.folder, seed)] = error

    if stage1:
        tasks = [Task(_stage1_task, job, (fn, m, s), partial(_stage1_error, m)) for fn, m, s in stage1]
        run_tasks(tasks, workers, note_error, "poisons and shared models", spec.progress)

    # Stage 2: the cells (a cell whose poison or defense state failed is recorded as failed).
    # Cells another run holds are skipped, then waited for: taken as done if it finished
    # them, run here if it died first.
    records: list[dict] = []
    cells = plan.pending
    while cells:
        claimed: list[Cell] = []

        def take(index: int, result: dict) -> None:
            if result["status"] == CLAIMED:
                claimed.append(cells[index])
            else:
                records.append(result)

        tasks = []
        for c in cells:
            upstream = (errors.get(("craft_poison", c.attack.folder, c.seed))
                        or errors.get(("prepare_defense", c.defense.folder, c.seed)))
            tasks.append(Task(run_cell, job, (c, upstream), partial(run_cell, job, c), c.path(plan.table_dir)))
        run_tasks(tasks, workers, take, "cells", spec.progress)
        if claimed:
            print(f"uebench: {len(claimed)} cell(s) held by another run; waiting for them", file=sys.stderr)
            wait_until_free([c.path(plan.table_dir) for c in claimed])
        cells = pending_cells(claimed, plan.table_dir)
    return records
