"""Run records: one small JSON file per cell, written atomically, with a checksum.

Layout (browsable, kept in git for the tables we publish)::

    results/<dataset>/<table-id>/<attack>/<defense>/seed<k>.json

``table-id`` names the protocol, model and epochs and ends in a hash of the whole table
configuration, so records of different protocols never mix. An attack or defense run
with hyperparameters other than its preset's carries ``@<hash>`` in its folder name.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from uebench import __version__

SCHEMA_VERSION = 2    # 2: attack.code and defense.code fingerprint the code that made the record; 1 had none
FINISHED = ("ok", "not-applicable")   # statuses a resume keeps

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


def checksum(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "checksum"}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def write_record(path: Path, record: dict) -> None:
    """Write ``record`` with its checksum via a temporary file and an atomic rename.

    Two workers finishing the same cell each rename a complete file; the last one wins
    and the file is never a mix of both.
    """
    record = dict(record, schema=SCHEMA_VERSION)
    record["checksum"] = checksum(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.stem}-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True, default=str, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_record(path: Path) -> dict | None:
    """The record at ``path``, or None when it is missing, truncated or fails its checksum."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("checksum") != checksum(record):
        return None
    return record


def iter_records(results_dir: Path) -> Iterator[tuple[Path, dict | None]]:
    """Every record file under ``results_dir`` (sorted), with its content or None if corrupt."""
    for path in sorted(Path(results_dir).glob("*/*/*/*/seed*.json")):
        yield path, read_record(path)


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the uebench source tree, with ``-dirty`` if it has local changes."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


def provenance() -> dict[str, Any]:
    return {"uebench_version": __version__, "git_commit": git_commit()}
