"""How uebench names and writes what it keeps: content keys, code fingerprints, atomic files.

Every file uebench writes (records, cache entries, the leaderboard) goes through
:func:`write_atomic`; every cache key is a :func:`content_key`; every record and cache entry
names the code that made it with a :func:`code_fingerprint`.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def content_key(obj: Any) -> str:
    """A stable hash of a JSON-able description (used for every cache key)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def code_fingerprint(*objects: Any) -> str:
    """A hash of the source files of the modules that define ``objects``, plus uebench's
    version: what a cache entry or a record was made by. Editing a method's file (a plugin's
    ``generate``, say) changes it, so what the old code made is never served as the new one's."""
    from uebench import __version__
    digest = hashlib.sha256(__version__.encode())
    for obj in objects:
        module = inspect.getmodule(obj)
        try:
            digest.update(Path(inspect.getsourcefile(module)).read_bytes())
        except (TypeError, OSError):      # no source file (built in the interpreter): its name stands in
            digest.update(f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', obj)}".encode())
    return digest.hexdigest()[:12]


def write_atomic(path: Path, content: str | bytes | Callable[[Path], None]) -> None:
    """The one way uebench writes a file: to a temporary file beside it, flushed to disk,
    then renamed over ``path``, so a reader (or a process killed mid-write) never sees half
    a file, and two writers of the same file leave one of their files whole. ``content`` is
    text, bytes, or a function that writes the temporary path it is given (``torch.save``).
    Temporary files are named ``.<name>.*.tmp``; those of a killed writer are removed by
    the next run (``workers.remove_stale_temp_files``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if callable(content):
            os.close(fd)
            content(Path(tmp))
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(content.encode() if isinstance(content, str) else content)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
