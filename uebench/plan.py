"""Planning: which cells a command asks for, and which of them still need running.

The grid is (attacks + the clean row) × (defenses + the no-defense column) × seeds. A plan
resolves names, checks every input (hyperparameters, budgets, data, the results folder)
before any work starts, and reads the existing records to find the pending cells: a cell is
finished when its record is intact, final, and made with the hyperparameters and code the
cell has now. Nothing here trains or generates anything, so a plan is cheap to make and test.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from uebench.api import hparams, typed_hparams
from uebench.budget import budget_warning, declared_threat_model
from uebench.data import KNOWN_SIZES, DataNotFound, Dataset, Splits, load_dataset, make_splits, subset_name
from uebench.presets import TableConfig, table_config
from uebench.protocols import get_protocol
from uebench.ratio import CLEAN_PART, FULL, grid_cells, ratio_of, seed_file
from uebench.records import Record, hparams_as_made, read_record
from uebench.registry import ATTACKS, DEFENSES, UserError, did_you_mean, load_plugin
from uebench.storage import code_fingerprint, content_key, method_fingerprint

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
    backend: str = "loky"                                         # loky | ray (threading is refused)
    retries: int = 2                                              # reruns of a task whose worker died
    cell_timeout: float | None = None                             # seconds a task's method code may take
    ray_address: str | None = None                                # None: start a local Ray instance
    force: bool = False
    progress: bool = True
    plugins: list[str] = field(default_factory=list)
    poison_ratios: list[float] | None = None                      # --poison-ratio; None: 1.0 (see ratio.py)




@dataclass(eq=False)   # one object per configured method; hashed by identity
class ConfiguredMethod:
    """An attack or defense with its hyperparameters, picklable without its class: workers
    rebuild the instance from the registry after loading plugins (a file plugin's class
    cannot be unpickled before that)."""

    kind: str            # "attack" | "defense"
    name: str
    folder: str          # name, or name@<hash> when run with non-preset hyperparameters
    params: dict         # the full hyperparameters
    _instance: Any = field(default=None, repr=False)
    code: str = ""       # fingerprint of the class's code and uebench's version (clean row: none)
    legacy_code: str = ""  # the fingerprint schema-2 records carry (the file's bytes)
    warnings: list[str] = field(default_factory=list)   # implausible settings, for the output and records

    @property
    def instance(self) -> Any:
        """The Attack / Defense object (None for the clean row)."""
        if self._instance is None and self.name not in (CLEAN, CLEAN_PART):
            registry = ATTACKS if self.kind == "attack" else DEFENSES
            self._instance = registry.get(self.name)(**self.params)
        return self._instance

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_instance": None}


@dataclass(frozen=True)
class Cell:
    attack: ConfiguredMethod
    defense: ConfiguredMethod
    seed: int
    ratio: float = FULL       # the poisoned fraction of the protected split (ratio.py)

    def path(self, table_dir: Path) -> Path:
        return table_dir / self.relpath

    @property
    def relpath(self) -> str:
        return f"{self.attack.folder}/{self.defense.folder}/{seed_file(self.seed, self.ratio)}"

    @cached_property          # a resume compares it with every record
    def params_key(self) -> str:
        """The hyperparameters this cell runs with; a record made with others is stale."""
        return params_key(self.attack.params, self.defense.params)


def params_key(attack_params: dict, defense_params: dict) -> str:
    return content_key({"attack": attack_params, "defense": defense_params})


@dataclass
class Plan:
    spec: RunSpec
    config: TableConfig
    dataset: Dataset | KnownSizes
    splits: Splits
    table_id: str | None          # None: planned without the data (KnownSizes)
    table_dir: Path | None
    cells: list[Cell]
    pending: list[Cell]
    corrupt: list[Path] = field(default_factory=list)              # records found truncated or tampered with

    def poison_sets(self) -> list[tuple[ConfiguredMethod, int]]:
        """(attack, seed) of every poison set the pending cells need, each once."""
        return sorted({(c.attack, c.seed) for c in self.pending if c.attack.name not in (CLEAN, CLEAN_PART)},
                      key=lambda p: (p[0].folder, p[1]))

    def shared_models(self) -> list[tuple[ConfiguredMethod, int]]:
        """(defense, seed) of every defense whose pending cells apply and need shared state (``prepare``)."""
        from uebench.api import Defense
        return sorted({(c.defense, c.seed) for c in self.pending
                       if self.config.protocol in c.defense.instance.protocols
                       and type(c.defense.instance).prepare is not Defense.prepare},
                      key=lambda p: (p[0].folder, p[1]))


def _names(spec: str | list[str]) -> str:
    return ",".join(spec) if isinstance(spec, (list, tuple)) else spec


NOMINAL_SHAPE = (3, 32, 32)   # an image shape for checking that a threat model builds


def configure(registry, name: str, preset: str, params: dict) -> ConfiguredMethod:
    """Instantiate a method with its preset's and the user's hyperparameters, checking the
    user's values before any work: their types, finite floats, the method's own
    ``__post_init__`` ranges and, for an attack, that its threat model builds (eps >= 0)."""
    cls = registry.get(name)
    given = ", ".join(f"{k}={v!r}" for k, v in params.items())
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in params:
        if key not in known:
            raise UserError(f"bad hyperparameters for {registry.kind} {name} ({given}): no hyperparameter {key!r}; "
                            f"{did_you_mean(key, known)}it has {', '.join(known) or 'none'}")
    try:
        instance = cls.for_preset(preset, **typed_hparams(cls, params))
        if registry.kind == "attack":
            declared_threat_model(instance, NOMINAL_SHAPE)
        check_architectures(cls, params)
    except (TypeError, ValueError) as err:
        raise UserError(f"bad hyperparameters for {registry.kind} {name} ({given}): {err}") from err
    folder = name
    if params and hparams(instance) != hparams(cls.for_preset(preset)):
        folder = f"{name}@{content_key(hparams(instance))[:6]}"
    return ConfiguredMethod(registry.kind, name, folder, hparams(instance), instance, method_fingerprint(cls),
                            legacy_code=code_fingerprint(cls, version=1))


def check_architectures(cls: type, params: dict) -> None:
    """A hyperparameter that names a network (``surrogate``, ``arch`` or ``*_arch``, whose
    default is None or one of uebench's models) must name a known model: ``-A em.surrogate=resnet99``
    is refused before any work, not inside the cell."""
    from uebench.models import check_model, is_model
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for key, value in params.items():
        names_a_model = key in ("surrogate", "arch") or key.endswith("_arch")
        if names_a_model and (defaults.get(key) is None or is_model(defaults.get(key))) and value is not None:
            try:
                check_model(str(value))
            except ValueError as err:
                raise ValueError(f"{key}={value!r} is not a model: {err}") from None


def table_identity(cfg: TableConfig, dataset: Dataset) -> tuple[str, dict]:
    """A readable id for the table plus everything it hashes: records of different
    protocols, models, training recipes or splits never share a table."""
    ident = {"dataset": dataset.identity(), "protocol": cfg.protocol, "model": cfg.model,
             "train": cfg.train.as_dict(), "n_reference": cfg.n_reference, "n_protected": cfg.n_protected,
             "split_seed": cfg.split_seed,
             "contrastive": get_protocol(cfg.protocol).settings(cfg)}
    if cfg.cell_threads is not None:   # absent from the tables made before it was a recipe field
        ident["cell_threads"] = cfg.cell_threads
    if cfg.surrogate is not None:      # likewise: poisons crafted on another architecture than the victim
        ident["surrogate"] = cfg.surrogate
    return f"{cfg.protocol}-{cfg.model}-{cfg.train.epochs}ep-{content_key(ident)[:6]}", ident


@dataclass
class KnownSizes:
    """A torchvision set that is not on disk, described by its published sizes (data.KNOWN_SIZES):
    enough to plan and price a grid, never to run one. Its labels are a balanced stand-in, so the
    splits have the sizes a run gives; the table id and the finished cells need the data itself."""

    name: str
    y_train: np.ndarray
    image_shape: tuple[int, int, int]
    source: str = "not on disk: planned from its known sizes"

    @classmethod
    def of(cls, cfg: TableConfig) -> "KnownSizes":
        n_train, n_test, shape, k = KNOWN_SIZES[cfg.dataset]
        take_train = cfg.train_subset if cfg.train_subset and cfg.train_subset < n_train else None
        take_test = cfg.test_subset if cfg.test_subset and cfg.test_subset < n_test else None
        return cls(subset_name(cfg.dataset, take_train, take_test), np.arange(take_train or n_train) % k, shape)

    def without_test(self) -> "KnownSizes":
        return self


def make_plan(spec: RunSpec, without_data: bool = False) -> Plan:
    """Resolve names, load data, and list the cells, failing early on any bad input.
    ``without_data`` (planning only): a torchvision set not on disk is planned from its known
    sizes (:class:`KnownSizes`), with every cell pending and no table id."""
    for plugin in spec.plugins:
        load_plugin(plugin)
    overrides = dict(spec.overrides)
    if spec.dataset:
        overrides["dataset"] = spec.dataset
    if spec.seeds:
        overrides["seeds"] = tuple(spec.seeds)
    cfg = table_config(spec.preset, **overrides)

    protocol = get_protocol(cfg.protocol)
    attack_names = ATTACKS.select(_names(spec.attacks))
    defense_names = DEFENSES.select(_names(spec.defenses), lists=protocol.lists)   # a detection table's: detectors
    for kind, given, known in (("attack", spec.attack_params, attack_names),
                               ("defense", spec.defense_params, defense_names)):
        stray = set(given) - set(known)
        if stray:
            raise UserError(f"hyperparameters given for {kind} {', '.join(sorted(stray))}, which is not selected")
    attacks = [ConfiguredMethod("attack", CLEAN, CLEAN, {})] + [
        configure(ATTACKS, n, cfg.preset, spec.attack_params.get(n, {})) for n in attack_names if n != CLEAN]
    if protocol.column == "detector" and spec.poison_ratios not in (None, [FULL]):
        raise UserError(f"--protocol {protocol.name} poisons a seeded half of each cell's split itself; "
                        f"leave out --poison-ratio")
    baseline = [NONE] if protocol.column == "defense" else []     # the undefended column, where there are defenses
    defenses = [configure(DEFENSES, d, cfg.preset, spec.defense_params.get(d, {}))
                for d in dict.fromkeys(baseline + defense_names)]

    try:
        dataset = load_dataset(cfg.dataset, spec.data_root, spec.download, cfg.train_subset, cfg.test_subset,
                               cfg.split_seed)
        dataset.check_every_class_trained()
    except DataNotFound:
        if not without_data:
            raise
        dataset = KnownSizes.of(cfg)
    need = cfg.n_reference + (cfg.n_protected or 1)
    if need > len(dataset.y_train):
        raise UserError(f"{dataset.name} has {len(dataset.y_train)} training images; the split needs {need} "
                        f"(--n-reference {cfg.n_reference}, --n-protected {cfg.n_protected})")
    splits = make_splits(dataset.y_train, cfg.n_reference, cfg.n_protected, cfg.split_seed)
    on_disk = isinstance(dataset, Dataset)
    if on_disk:
        dataset.check_every_class_trained(splits.protected)
    for attack in attacks[1:]:
        attack.warnings = budget_warnings(attack, dataset.image_shape)
    cells = grid_cells(attacks, defenses, cfg.seeds, spec.poison_ratios, len(splits.protected))  # checks the ratios
    results_dir = Path(spec.results_dir)
    if not without_data:             # planning writes nothing
        check_writable(results_dir)  # makes the folder: only once the input is known to be good
    table_id = table_identity(cfg, dataset)[0] if on_disk else None
    table_dir = results_dir / dataset.name / table_id if on_disk else None
    pending, corrupt = (cells, []) if spec.force or not on_disk else scan_records(cells, table_dir)
    # the plan outlives the cells the driver runs: it keeps no test image (see job.test_split)
    return Plan(spec, cfg, dataset.without_test(), splits, table_id, table_dir, cells, pending, corrupt)


def budget_warnings(attack: ConfiguredMethod, image_shape: tuple[int, int, int]) -> list[str]:
    """A warning when the attack's budget for these images is far above the field's norms."""
    try:
        warning = budget_warning(declared_threat_model(attack.instance, image_shape))
    except (TypeError, ValueError) as err:
        raise UserError(f"attack {attack.folder} has no valid threat model for images {image_shape}: {err}") from err
    return [warning] if warning else []


def cache_dir_of(spec: RunSpec) -> Path:
    return Path(spec.cache_dir or Path(spec.results_dir) / ".cache")


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


def finished_as(record: Record, cell: Cell) -> bool:
    """Whether ``record`` is a final result of ``cell`` as it is configured and coded now."""
    if not record.finished_ok or ratio_of(record) != cell.ratio:
        return False
    made_with = params_key(hparams_as_made(record.attack.name, record.attack.hparams),
                           hparams_as_made(record.defense.name, record.defense.hparams))
    if made_with != cell.params_key:
        return False
    # Legacy records, schema 1, are trusted: written before records carried the fingerprint of
    # their code, they stay finished; a fingerprint that differs is stale. Schema 2 records
    # carry the fingerprint of the file's bytes (storage.code_fingerprint version 1).
    def current(method: ConfiguredMethod) -> str:
        return method.code if record.schema >= 3 else method.legacy_code

    return all(made.code in (None, current(method)) for made, method in ((record.attack, cell.attack),
                                                                         (record.defense, cell.defense)))


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

