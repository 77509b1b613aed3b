"""Run records: one small JSON file per cell, written atomically, with a checksum.

Layout (browsable, kept in git for the tables we publish)::

    results/<dataset>/<table-id>/<attack>/<defense>/seed<k>.json
    results/<dataset>/<table-id>/<attack>/<defense>/seed<k>-ratio<r>.json   (poison ratio r < 1)

``table-id`` names the protocol, model and epochs and ends in a hash of the whole table
configuration, so records of different protocols never mix. An attack or defense run
with hyperparameters other than its preset's carries ``@<hash>`` in its folder name.

The schema is the :class:`Record` dataclass below: :func:`write_record` is its one writer
and :func:`load_record` its one reader, which checks every field's type and names the file
and the field it rejects. The runner, the workers and the leaderboard handle records only
as :class:`Record` objects.

Versions: 1 had no code fingerprints; 2 adds ``attack.code`` and ``defense.code`` (hashes of
the method's file); 3 hashes the method's code instead (``storage.code_fingerprint``), so a
docstring or an import path can change without making records stale. A record of an older
version is read as it is (its missing fields take their defaults; a missing fingerprint
marks a legacy record, trusted as made by today's code; a version-2 fingerprint is compared
with the file's hash). ``uebench migrate`` restamps version-2 records whose file is
unchanged as version 3 (run it before editing a method file's imports or docstrings). To change the schema:
bump ``SCHEMA_VERSION``, give a new field a default that means "written before it existed",
and, if an old field changes meaning, add a function to ``MIGRATIONS`` that turns a record
of the old version into the new one's form before it is checked. Never rewrite committed
records in place: they carry checksums, and the leaderboard is a function of them.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

from uebench.storage import write_atomic

# 1: no code fingerprints; 2: attack.code and defense.code, fingerprints of the method's file
# (storage.code_fingerprint version 1); 3: the same, of the method's code (version 2).
SCHEMA_VERSION = 3
STATUSES = ("ok", "failed", "not-applicable")
FINISHED = ("ok", "not-applicable")   # statuses a resume keeps
MIGRATIONS: dict[int, Callable[[dict], dict]] = {}   # version k -> a function from a raw k record to k + 1

# Hyperparameters a method gained after records of it were written, with the value those
# records were made with: a record that lacks one is read as made with that value. So a new
# option that keeps the old behaviour available leaves the old records valid where the
# cell still runs that behaviour, and a default that changed makes them stale (EM's
# export, LE's guidance_batch, AR's coefficients) instead of passing them off as current.
# Add a line here whenever a method gains a hyperparameter.
ADDED_HPARAMS: dict[str, dict[str, Any]] = {
    "em": {"export": "signed", "grad_clip": 0.0},      # 2026-12: the official export and clip, the defaults
    "em-classwise": {"export": "signed", "grad_clip": 0.0},
    "le": {"guidance_batch": 1},                       # 2026-12: the official strength, the default
    "ar": {"norm": "l2", "coefficients": "search"},    # 2026-12: the published CIFAR-10 processes
}


def hparams_as_made(method: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """A record's hyperparameters, completed with the values of those added after it was written."""
    return {**ADDED_HPARAMS.get(method, {}), **hparams}



class RecordError(ValueError):
    """A record file that cannot be used; the message names the file and what is wrong."""


# -- the schema ------------------------------------------------------------------------

@dataclass
class ThreatModelInfo:
    norm: str                       # linf | l2 | l0 | none
    eps: float
    text: str                       # as the leaderboard prints it, e.g. "L∞ 8/255"


@dataclass
class AttackInfo:
    name: str                       # the registry name ("clean" for the row without an attack)
    folder: str                     # name, or name@<hash> for non-preset hyperparameters
    hparams: dict = field(default_factory=dict)
    code: str | None = None         # fingerprint of the code that made it (see SCHEMA_VERSION); None: legacy
    threat_model: ThreatModelInfo | None = None
    target: str | None = None       # supervised | contrastive (None for the clean row)
    paper: str = ""


@dataclass
class DefenseInfo:
    name: str
    folder: str
    hparams: dict = field(default_factory=dict)
    code: str | None = None
    paper: str = ""
    protocols: list = field(default_factory=list)
    transforms_test: bool = False


@dataclass
class TableInfo:
    """The table a record belongs to: everything its id hashes, in readable form."""
    id: str
    preset: str
    protocol: str                   # supervised | contrastive
    model: str
    dataset: dict                   # name, shape, fingerprint, sizes, source
    train: dict                     # the victim's TrainConfig.as_dict()
    split: dict                     # n_protected, n_reference, n_test, split_seed
    contrastive: dict = field(default_factory=dict)
    # the architecture the poisons were crafted on (--surrogate) where it is not the victim
    # (``model``); None: the victim, as in every record before the option existed
    surrogate: str | None = None


@dataclass
class Metrics:
    """What a cell measured; which number its table shows is its protocol's (``Protocol.value``)."""
    test_acc: float | None = None   # clean test accuracy (supervised, contrastive)
    train_acc: float | None = None  # on the (poisoned, undefended) training images
    n_test: int | None = None
    n_train: int | None = None
    auroc: float | None = None      # detection: AUROC of the detector's scores against the poison mask
    flag_acc: float | None = None   # detection: accuracy of the detector's own yes/no decisions
    n_poisoned: int | None = None   # detection: how many of the n_train images were protected


@dataclass
class Record:
    """One cell's result: who it is, how it was made, what it measured."""
    status: str                     # ok | failed | not-applicable
    seed: int
    attack: AttackInfo
    defense: DefenseInfo
    table: TableInfo | None = None  # None only when the cell failed before it was described
    metrics: Metrics | None = None  # set when status is ok
    error: str | None = None
    traceback: str | None = None
    budget: dict = field(default_factory=dict)      # measured linf_max, l2_max, l0_max
    poison: dict | None = None      # below poison ratio 1: ratio, n_poisoned, indices_sha256 (ratio.py); None: 1
    notes: dict = field(default_factory=dict)       # facts the methods reported: {"attack": {}, "defense": {}}
    timing: dict = field(default_factory=dict)      # poison_s, fit_s, cell_s
    warnings: list = field(default_factory=list)
    device: str | None = None
    threads: int | None = None      # CPU threads: float sums reorder with them
    finished: str | None = None     # UTC time, ISO 8601
    uebench_version: str | None = None
    git_commit: str | None = None
    schema: int = SCHEMA_VERSION

    @property
    def finished_ok(self) -> bool:
        return self.status in FINISHED

    @property
    def test_acc(self) -> float | None:
        return self.metrics.test_acc if self.metrics else None

    def to_dict(self) -> dict:
        """The JSON form; fields left unset (None) are left out."""
        return _as_json(self)

    @classmethod
    def from_dict(cls, raw: Any, where: Any = "record") -> "Record":
        """Check ``raw`` against the schema; a RecordError names ``where`` and the field."""
        if not isinstance(raw, dict):
            raise RecordError(f"{where}: not a JSON object")
        version = raw.get("schema", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise RecordError(f"{where}: schema {version!r}, newer than this uebench reads ({SCHEMA_VERSION}); "
                              f"upgrade uebench")
        while version in MIGRATIONS:
            raw, version = MIGRATIONS[version](raw), version + 1
        return _parse(cls, raw, where, "")


KEEP_NONE = {"error", "target"}     # written as null: "no error", "no attack"
NESTED = {"attack": AttackInfo, "defense": DefenseInfo, "table": TableInfo, "metrics": Metrics,
          "threat_model": ThreatModelInfo}
TYPES = {"str": frozenset({str}), "int": frozenset({int}), "float": frozenset({int, float}),
         "bool": frozenset({bool}), "dict": frozenset({dict}), "list": frozenset({list})}


def _as_json(part) -> dict:
    """A schema dataclass as a dict, leaving out its unset fields (free-form dicts such as
    ``hparams`` and ``notes`` are kept whole, their None values included)."""
    out = {}
    for f in fields(part):
        value = getattr(part, f.name)
        if value is None and f.name not in KEEP_NONE:
            continue
        out[f.name] = _as_json(value) if is_dataclass(value) else copy.deepcopy(value)
    return out


@lru_cache(maxsize=None)
def _schema(cls) -> tuple[frozenset, tuple[tuple[str, bool, type | None, frozenset | None, bool], ...]]:
    """The field names of ``cls``, and per field: (name, required, nested schema class,
    accepted value types, may be None). Computed once per class: a resume reads every record."""
    out = []
    for f in fields(cls):
        base = f.type.split("|")[0].strip()       # annotations are strings: "float | None" -> "float"
        out.append((f.name, f.default is MISSING and f.default_factory is MISSING, NESTED.get(f.name),
                    TYPES.get(base), "None" in f.type))
    names = {f.name for f in fields(cls)} | ({"checksum"} if cls is Record else set())   # checked by the reader
    return frozenset(names), tuple(out)


_ABSENT = object()


def _parse(cls, raw: dict, where, prefix: str):
    """Build dataclass ``cls`` from ``raw``, checking names, presence and types (``type(v) in
    accepted``, not isinstance: a bool is not an int here, and a resume parses every record)."""
    names, schema = _schema(cls)
    if not names.issuperset(raw):
        raise RecordError(f"{where}: unknown field {prefix}{sorted(set(raw) - names)[0]}")
    values = {}
    for name, required, nested, accepted, nullable in schema:
        value = raw.get(name, _ABSENT)
        if value is _ABSENT:
            if required:
                raise RecordError(f"{where}: lacks {prefix}{name}")
            continue
        if nested is not None and value == {} and nullable:    # older versions wrote {} for "unset"
            value = None
        if value is None:
            if not nullable:
                raise RecordError(f"{where}: {prefix}{name} must not be null")
        elif nested is not None:
            if type(value) is not dict:
                raise RecordError(f"{where}: {prefix}{name} must be an object, got {type(value).__name__}")
            value = _parse(nested, value, where, f"{prefix}{name}.")
        elif accepted is not None and type(value) not in accepted:
            raise RecordError(f"{where}: {prefix}{name} must be {_name(accepted)}, got {value!r:.60}")
        values[name] = value
    record = cls(**values)
    if cls is Record:
        _check_consistency(record, where)
    return record


def _name(accepted: frozenset) -> str:
    return "a number" if float in accepted else next(iter(accepted)).__name__


def _check_consistency(record: Record, where: str) -> None:
    if record.status not in STATUSES:
        raise RecordError(f"{where}: status must be one of {', '.join(STATUSES)}, got {record.status!r}")
    if record.status == "ok" and (record.metrics is None or
                                  record.metrics.test_acc is None and record.metrics.auroc is None):
        raise RecordError(f"{where}: lacks metrics.test_acc (status ok)")
    if record.status in FINISHED and record.table is None:
        raise RecordError(f"{where}: lacks table (status {record.status})")


# -- reading and writing ---------------------------------------------------------------

def checksum(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "checksum"}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def write_record(path: Path, record: Record) -> None:
    """Write ``record`` with its checksum via a temporary file and an atomic rename.

    Two workers finishing the same cell each rename a complete file; the last one wins
    and the file is never a mix of both.
    """
    data = dict(record.to_dict(), schema=SCHEMA_VERSION)
    data["checksum"] = checksum(data)
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True, default=str, allow_nan=False) + "\n")


def load_record(path: Path) -> Record:
    """The record at ``path``; RecordError (naming the file and the fault) when it is missing,
    truncated, fails its checksum or breaks the schema."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except OSError as err:
        raise RecordError(f"{path}: cannot read ({err.strerror})") from err
    except ValueError as err:
        raise RecordError(f"{path}: truncated or not JSON") from err
    if not isinstance(raw, dict) or raw.get("checksum") != checksum(raw):
        raise RecordError(f"{path}: fails its checksum (edited or truncated)")
    return Record.from_dict(raw, path)


def read_record(path: Path) -> Record | None:
    """The record at ``path``, or None when there is none that can be used (the cell is redone)."""
    try:
        return load_record(path)
    except RecordError:
        return None


def iter_records(results_dir: Path) -> Iterator[tuple[Path, Record | RecordError]]:
    """Every record file under ``results_dir`` (sorted), with its record or why it is unusable."""
    for path in sorted(Path(results_dir).glob("*/*/*/*/seed*.json")):
        try:
            yield path, load_record(path)
        except RecordError as err:
            yield path, err


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the uebench source tree, with ``-dirty`` if it has local changes
    (``UEBENCH_GIT_COMMIT`` where the tree travelled without its history: a device machine)."""
    if os.environ.get("UEBENCH_GIT_COMMIT"):
        return os.environ["UEBENCH_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
