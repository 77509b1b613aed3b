"""``uebench migrate``: bring committed records up to the current schema, where that is sound.

Records are never rewritten by a run, only by this command, and only where the new form
says nothing the old one did not: a schema-2 record whose methods' files are byte for byte
the files it names (its version-1 fingerprints match) is restamped with the version-2
fingerprints of the same code, as schema 3. A record whose fingerprint does not match was
made by other code; it is left as it is (the next run redoes it). Legacy records without
fingerprints are left as they are (they are trusted as made by the current code).
"""
from __future__ import annotations

from pathlib import Path

from uebench.plan import CLEAN
from uebench.records import Record, RecordError, iter_records, write_record
from uebench.registry import ATTACKS, DEFENSES, PluginError
from uebench.storage import code_fingerprint


def fingerprints(kind: str, name: str) -> tuple[str, str] | None:
    """(version 1, version 2) fingerprints of a method's code now, or None when it does not load."""
    if kind == "attack" and name == CLEAN:
        return "", ""
    try:
        cls = (ATTACKS if kind == "attack" else DEFENSES).get(name)
    except PluginError:
        return None
    return code_fingerprint(cls, version=1), code_fingerprint(cls)


def migrate(results_dir: Path, dry_run: bool = False) -> dict[str, list[Path]]:
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
        restamped = restamp(record)
        if restamped is None:
            outcome["stale"].append(path)
            continue
        if not dry_run:
            write_record(path, restamped)
        outcome["migrated"].append(path)
    return outcome


def restamp(record: Record) -> Record | None:
    """The schema-3 form of a schema-2 record, or None when its code has changed since."""
    for kind, part in (("attack", record.attack), ("defense", record.defense)):
        if part.code is None:
            continue
        now = fingerprints(kind, part.name)
        if now is None or part.code != now[0]:
            return None
        part.code = now[1]
    record.schema = 3
    return record
