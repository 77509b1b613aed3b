"""Claims: which process is making a cell's record (or a poison set) right now.

Concurrent runs on one results folder (on one machine, or on several nodes sharing a file
system) split a grid instead of each doing all of it: before a cell runs, its process creates
a claim file next to the record (``.seed0.claim``, holding its host and pid) with an exclusive
create, which only one process can win. A run that finds a cell claimed skips it and, once its
own cells are done, waits for the claim to go and takes the record the holder wrote.

A claim is abandoned, and taken over, when its holder is a dead pid on this host, or when it
has not been refreshed for ``STALE_S`` seconds (the holder's node died or hangs): the holder
touches it every ``REFRESH_S`` seconds while it works. A claim only ever decides who does the
work; the record is written atomically as always, so a race (two processes taking over the
same abandoned claim) costs a cell computed twice, never a torn or mixed record.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

REFRESH_S = 30.0     # how often a holder touches its claim
STALE_S = 300.0      # a claim untouched this long is abandoned (another node's holder died)
UNWRITTEN_S = 10.0   # a claim file still empty this long: its holder died while creating it


def claim_path(target: Path) -> Path:
    """The claim file of a record or cache file: hidden, beside it."""
    return target.with_name(f".{target.stem}.claim")


def holder_of(path: Path) -> dict | None:
    """The live holder ({"host", "pid"}) of the claim file ``path``, or None when there is no
    claim or it is abandoned."""
    try:
        age = time.time() - os.stat(path).st_mtime
        text = path.read_text()
    except OSError:
        return None
    try:
        holder = json.loads(text)
    except ValueError:               # being written, or its writer died while writing it
        return None if age > UNWRITTEN_S else {"host": "?", "pid": 0}
    if age > STALE_S:
        return None
    if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", 0))):
        return None
    return holder


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # alive, another user's
        return True
    return True


class Claim:
    """This process's claim on one target; ``acquire`` and ``release`` it around the work."""

    def __init__(self, target: Path):
        self.path = claim_path(Path(target))
        self.owner = {"host": socket.gethostname(), "pid": os.getpid()}
        self._stop: threading.Event | None = None

    def acquire(self) -> dict | None:
        """Take the claim: None when this process now holds it, else the live holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = holder_of(self.path)
                if holder is not None:
                    return holder
                self.path.unlink(missing_ok=True)     # abandoned: take it over
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.owner, f)
            self._refresh_while_held()
            return None
        return holder_of(self.path) or {"host": "?", "pid": 0}   # others kept taking it first

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None
        try:
            if json.loads(self.path.read_text()) == self.owner:   # never remove a claim taken over
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def _refresh_while_held(self) -> None:
        stop = self._stop = threading.Event()

        def refresh() -> None:
            while not stop.wait(REFRESH_S):
                try:
                    os.utime(self.path)
                except OSError:
                    return

        threading.Thread(target=refresh, name="uebench-claim-refresh", daemon=True).start()


def wait_until_free(targets: list[Path], poll_s: float = 1.0) -> None:
    """Return once none of ``targets`` has a live claim on it."""
    while any(holder_of(claim_path(t)) is not None for t in targets):
        time.sleep(poll_s)
