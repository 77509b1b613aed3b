"""Running a method's code: what it may end, and for how long.

A method is somebody else's code. Its own ``sys.exit()`` or ``raise KeyboardInterrupt`` must
fail its task, not end the grid (and not end it with exit status 0), and a method that never
returns must not hold its cell's claim forever. :func:`method_code` wraps every call into a
method (a poison set, a defense's preparation, a cell) so that:

- ``SystemExit`` and a ``KeyboardInterrupt`` that no signal caused become a
  :class:`MethodFault`, an ordinary exception, which fails the task with its reason;
- a real interrupt (SIGINT: Ctrl-C, or ``kill -INT``) still stops the run: the handler that
  :func:`install_interrupt_flag` puts in place notes the signal before raising;
- past ``timeout_s`` seconds the method's code is interrupted with :class:`TaskTimeout`. It is
  raised from a SIGALRM handler, so it lands between two Python steps: a single long C call (one
  big convolution) finishes first. It derives from ``BaseException`` so that a method's own
  ``except Exception`` cannot swallow it, and leaves the context as a :class:`MethodFault`.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

_signalled = False      # set when this process received a real SIGINT


class MethodFault(Exception):
    """A method ended its own task (exit, interrupt of its own, time limit)."""


class TaskTimeout(BaseException):
    """Raised inside a method's code when its task is over its time limit."""


def _on_sigint(signum, frame) -> None:
    global _signalled
    _signalled = True
    raise KeyboardInterrupt


def install_interrupt_flag() -> None:
    """Let a real SIGINT be told from a method's ``raise KeyboardInterrupt`` (in the main
    thread of the driver and of each worker; the signal is handled as before otherwise)."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)


def _on_alarm(signum, frame) -> None:
    raise TaskTimeout


@contextmanager
def method_code(timeout_s: float | None = None) -> Iterator[None]:
    """Run the enclosed call into a method under the rules of this module's docstring."""
    timed = bool(timeout_s) and threading.current_thread() is threading.main_thread()
    if timed:
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        yield
    except TaskTimeout:
        raise MethodFault(f"over the time limit of {timeout_s:g} s (--cell-timeout)") from None
    except SystemExit as err:
        raise MethodFault(f"the method called sys.exit({err.code!r})") from None
    except KeyboardInterrupt:
        if _signalled:
            raise
        raise MethodFault("the method raised KeyboardInterrupt (no interrupt of the run was received)") from None
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
