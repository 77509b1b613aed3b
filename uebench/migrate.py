"""``uebench migrate``: bring committed records up to the current schema, where that is sound.

Records are never rewritten by a run, only by this command, and only where the new form
says nothing the old one did not: a schema-2 record whose methods' files are byte for byte
the files it names (its version-1 fingerprints match) is restamped with the version-2
fingerprints of the same code, as schema 3 (``--as-of REV``: the files as they were at git
revision REV, where the code has not changed since). A record whose fingerprint does not match was
made by other code; it is left as it is (the next run redoes it). Legacy records without
fingerprints are left as they are (they are trusted as made by the current code).
"""
from __future__ import annotations

import inspect
import subprocess
from pathlib import Path

from uebench.plan import CLEAN
from uebench.records import Record, RecordError, iter_records, write_record
from uebench.registry import ATTACKS, DEFENSES, PluginError, UserError
from uebench.storage import code_fingerprint, method_fingerprint, source_fingerprint


def fingerprints(kind: str, name: str, as_of: str | None = None) -> tuple[str, str] | None:
    """(the version-1 fingerprint a record made by the method's code carries, the version-2
    fingerprint of that code now), or None when the method does not load. ``as_of`` (a git
    revision): the version-1 fingerprint is that of the method's file at that revision, and
    None is returned when its code (not its docstrings, comments or import paths) changed since."""
    if kind == "attack" and name == CLEAN:
        return "", ""
    try:
        cls = (ATTACKS if kind == "attack" else DEFENSES).get(name)
    except PluginError:
        return None
    now = method_fingerprint(cls)
    if as_of is None:
        return code_fingerprint(cls, version=1), now
    path = Path(inspect.getsourcefile(cls)).resolve()
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path.parent, capture_output=True,
                         text=True).stdout.strip()
    shown = subprocess.run(["git", "show", f"{as_of}:{path.relative_to(top).as_posix()}"], cwd=top,
                           capture_output=True)
    if shown.returncode != 0:
        raise UserError(f"cannot read {path.name} at revision {as_of}: {shown.stderr.decode().strip()}")
    if source_fingerprint(shown.stdout) != now:
        return None
    return source_fingerprint(shown.stdout, version=1), now


def migrate(results_dir: Path, dry_run: bool = False, as_of: str | None = None) -> dict[str, list[Path]]:
    """Restamp what can be restamped; returns the paths by outcome: migrated, stale (made by
    other code: left), current (already schema 3 or legacy), unreadable."""
    outcome: dict[str, list[Path]] = {"migrated": [], "stale": [], "current": [], "unreadable": []}
    for path, record in iter_records(results_dir):
        if isinstance(record, RecordError):
            outcome["unreadable"].append(path)
            continue
        if record.schema >= 3 or (record.attack.code is None and record.defense.code is None):
            outcome["current"].append(path)
            continue
        restamped = restamp(record, as_of)
        if restamped is None:
            outcome["stale"].append(path)
            continue
        if not dry_run:
            write_record(path, restamped)
        outcome["migrated"].append(path)
    return outcome


def restamp(record: Record, as_of: str | None = None) -> Record | None:
    """The schema-3 form of a schema-2 record, or None when its code has changed since."""
    for kind, part in (("attack", record.attack), ("defense", record.defense)):
        if part.code is None:
            continue
        now = fingerprints(kind, part.name, as_of)
        if now is None or part.code != now[0]:
            return None
        part.code = now[1]
    record.schema = 3
    return record
