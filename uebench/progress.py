"""What a run says while it works, fitted to where its output goes.

On a terminal: a bar per stage (and, when cells run in the driver, the current cell's own
bars). Anywhere else (CI, a log file, a cluster job): one line per finished task, with what
is left and an estimate of the time it will take, and no carriage-return bars, so a log
holds one line per cell instead of thousands. ``--quiet``: nothing.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


def interactive(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    return hasattr(stream, "isatty") and stream.isatty()


def duration(seconds: float) -> str:
    """12 s, 3.5 min, 2.1 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class Progress:
    def __init__(self, total: int, what: str, enabled: bool = True, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.total, self.what, self.enabled, self.count = total, what, enabled, 0
        self.start = time.monotonic()
        self.bar = None
        if enabled and interactive(self.stream):
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=what, dynamic_ncols=True, file=self.stream)

    def done(self, line: str) -> None:
        """One task finished; ``line`` says which and how it went."""
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled:
            left = self.total - self.count
            rate = (time.monotonic() - self.start) / self.count
            eta = f", about {duration(rate * left)}" if left else ""
            print(f"uebench: [{self.count}/{self.total}] {line} ({left} {self.what} left{eta})",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
