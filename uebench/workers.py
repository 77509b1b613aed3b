"""Where the runner's tasks run, and what happens when a worker dies: what every backend shares.

Three places: the driver itself (one job), local worker processes through joblib (loky,
:mod:`uebench.backends.loky`: one worker per GPU, each task pinned to the GPU it takes from a
queue, or CPU workers), and a Ray cluster (:mod:`uebench.backends.ray`: Ray's own tasks, each
asks for one GPU, or for its CPU threads, and Ray places it). This module holds what they
share: the task, the workers' description, the count of each task's deaths, and what runs in
a worker around a task. A backend's module is imported when a run uses it.

A task is ``fn(job, *args)``. The runner's tasks never raise (a failing method becomes a
failed record), so an exception out of the pool means the process running a task died: it
was killed, ran out of memory, or a plugin called ``os._exit``. Such tasks run again, at most
``retries`` more times each; a task whose attempts are used up gets its ``fallback`` result,
made in the driver (for a cell: a failed record that says why). With loky a dead worker aborts
the whole call and every task in flight with it, so the tasks that had started are only
suspects: they run again one at a time, where a task that kills its worker again is the only
one charged and its innocent neighbours finish. On Ray a task fails alone and is charged
directly. A cell whose worker wrote its record but died before answering is not redone.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from uebench.records import read_record

BACKENDS = ("loky", "ray")   # threading is refused: threads share torch's RNG and thread count


@dataclass
class Task:
    fn: Callable[..., Any]            # fn(job, *args), run by a worker; never raises
    job: Any                          # a runner.Job; a worker's slot replaces its device
    args: tuple
    fallback: Callable[[str], Any]    # the result, made in the driver, once its workers died too often
    record: Path | None = None        # a cell's record, taken as its result if a dying worker wrote it


@dataclass
class Workers:
    """How tasks run: where, how many at once, on which devices, with how many threads."""

    backend: str                      # inline | loky | ray
    jobs: int                         # tasks at once
    device: str                       # a task's device when there are no slots
    threads: int                      # torch CPU threads per task
    slots: tuple[str, ...] = ()       # local: the device of each concurrent task (one per GPU)
    ray_options: dict = field(default_factory=dict)   # resources of one Ray task
    retries: int = 2                  # reruns of a task whose worker died
    owns_ray: bool = False            # this run started Ray, so it stops it

    def describe(self) -> str:
        if self.backend == "inline":
            return f"running in this process on {self.device}"
        where = ", ".join(self.slots) if self.slots else self.device
        return (f"{self.jobs} {self.backend} workers on {where}, {self.threads} CPU thread(s) each; "
                f"a task whose worker dies runs again up to {self.retries} time(s)")


def local_workers(device: str, jobs: int | None, backend: str, retries: int, gpus: int,
                  cpus: int) -> Workers:
    """Workers on this machine. ``device`` is resolved (cpu, cuda, cuda:N); ``gpus`` the
    number of visible GPUs. ``--device cuda`` (or auto) with several GPUs runs one worker per
    GPU unless ``--jobs`` says otherwise; each task holds one GPU while it runs."""
    spread = device == "cuda" and gpus > 1          # cuda:N pins every task to that GPU
    # at most one worker per core (more only slow each other down; each one also drives its
    # GPU from a core), and each joblib call starts no more workers than it has tasks
    jobs = min(jobs or (gpus if spread else 1), max(1, cpus))
    if jobs == 1:
        return Workers("inline", 1, device, max(1, cpus) if device == "cpu" else 1, retries=retries)
    if device == "cpu":
        return Workers(backend, jobs, device, max(1, cpus // jobs), retries=retries)
    slots = tuple(f"cuda:{k % gpus}" for k in range(jobs)) if spread else ()
    return Workers(backend, jobs, device, 1, slots=slots, retries=retries)


def stop(workers: Workers) -> None:
    """Shut down what this run started (a local Ray cluster)."""
    if workers.owns_ray:
        import ray
        ray.shutdown()


# -- in a worker -------------------------------------------------------------------------

_WATCHED_DRIVER: int | None = None


def exit_with_driver(driver_pid: int, every_s: float = 1.0) -> None:
    """In a local worker process: exit as soon as the driver is gone (killed, even by SIGKILL),
    so that no orphan goes on writing records. A thread checks every second whether this
    process has lost its parent (it is then re-parented, on Linux and macOS alike) or, for a
    worker that is not the driver's child, whether the driver's pid is gone. Once per process;
    nothing in the driver itself."""
    global _WATCHED_DRIVER
    if _WATCHED_DRIVER == driver_pid or os.getpid() == driver_pid:
        return
    _WATCHED_DRIVER = driver_pid
    is_child = os.getppid() == driver_pid

    def driver_gone() -> bool:
        if is_child:
            return os.getppid() != driver_pid
        try:
            os.kill(driver_pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:      # alive, owned by another user
            pass
        return False

    def watch() -> None:
        while not driver_gone():
            time.sleep(every_s)
        os._exit(1)      # a half-written record is a temp file: the next run removes it and redoes the cell

    threading.Thread(target=watch, name="uebench-exit-with-driver", daemon=True).start()


def run_task(index: int, fn: Callable, job: Any, args: tuple, slots: Any = None,
             devices: tuple[str, ...] = (), started: Path | None = None,
             driver_pid: int | None = None) -> tuple[int, Any]:
    """Run one task in a worker, holding one device slot from the shared queue while it runs."""
    if driver_pid is not None:
        exit_with_driver(driver_pid)
    if started is not None:
        started.touch()         # tells the driver this task was running if the worker dies
    if slots is None:
        return index, fn(job, *args)
    slot = slots.get()
    device = devices[slot]
    try:
        if device.startswith("cuda"):
            import torch
            torch.cuda.set_device(device)   # code that says "cuda" lands on this task's GPU too
        return index, fn(replace(job, device=device, slot=slot), *args)
    finally:
        if device.startswith("cuda"):       # the next task of this process may get another GPU:
            torch.cuda.empty_cache()        # leave none of its memory reserved on this one
        slots.put(slot)


# -- in the driver -----------------------------------------------------------------------

def run_tasks(tasks: list[Task], workers: Workers, on_result: Callable[[int, Any], None]) -> None:
    """Run every task; ``on_result(index, result)`` is called once per task, in the driver,
    as results arrive (in any order)."""
    if workers.backend == "inline":        # in the driver: a dead task is a dead run (resume it)
        for index, task in enumerate(tasks):
            on_result(index, task.fn(task.job, *task.args))
    elif workers.backend == "ray":
        from uebench.backends.ray import run_on_ray
        run_on_ray(tasks, workers, on_result)
    else:
        from uebench.backends.loky import run_local
        run_local(tasks, workers, on_result)


class Attempts:
    """Counts the deaths of each task and decides between a rerun and its fallback."""

    def __init__(self, tasks: list[Task], retries: int, deliver: Callable[[int, Any], None]):
        self.tasks, self.retries, self.deliver = tasks, retries, deliver
        self.deaths: Counter[int] = Counter()

    def recovered(self, index: int) -> bool:
        """Deliver a cell whose worker finished its record before dying."""
        path = self.tasks[index].record
        record = read_record(path) if path is not None else None
        if record is not None and record.finished_ok:
            self.deliver(index, record)
            return True
        return False

    def died(self, index: int, error: BaseException) -> bool:
        """Charge one death; True if the task may run again, else its fallback is delivered."""
        self.deaths[index] += 1
        if self.deaths[index] <= self.retries:
            return True
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        self.deliver(index, self.tasks[index].fallback(f"worker died {self.deaths[index]} times: {reason}"))
        return False


def warn_rerun(error: BaseException, count: int) -> None:
    """Say, in the driver, that a worker died and how many tasks run again."""
    from tqdm.auto import tqdm
    tqdm.write(f"uebench: a worker died ({type(error).__name__}); running {count} task(s) again", file=sys.stderr)


def remove_stale_temp_files(folders: Iterable[Path], older_than_s: float = 300.0) -> int:
    """Delete temporary files left in ``folders`` (not below) by writers killed mid-write
    (``.*.tmp``, as ``storage.write_atomic`` names them; ``.tmp-*`` from older versions). Readers never look at them; only old ones
    go, since a live writer on another worker may be about to rename its own."""
    cutoff, removed = time.time() - older_than_s, 0
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:        # not made yet
            continue
        for entry in entries:
            if not (entry.name.startswith(".tmp-") or (entry.name.startswith(".") and entry.name.endswith(".tmp"))):
                continue
            try:
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:        # another run removed it first
                pass
    return removed
