"""Where the runner's tasks run, and what happens when a worker dies.

Three places: the driver itself (one job), local worker processes through joblib (loky; one
worker per GPU, each task pinned to the GPU it takes from a queue, or CPU workers), and a Ray
cluster (Ray's own tasks: each asks for one GPU, or for its CPU threads, and Ray places it).

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
import queue
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from uebench.records import read_record
from uebench.registry import UserError

BACKENDS = ("loky", "threading", "ray")


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

    backend: str                      # inline | loky | threading | ray
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
    jobs = jobs or (gpus if spread else 1)
    if jobs == 1:
        return Workers("inline", 1, device, max(1, cpus) if device == "cpu" else 1, retries=retries)
    if device == "cpu":
        return Workers(backend, jobs, device, max(1, cpus // jobs), retries=retries)
    slots = tuple(f"cuda:{k % gpus}" for k in range(jobs)) if spread else ()
    return Workers(backend, jobs, device, 1, slots=slots, retries=retries)


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--backend ray needs Ray, which is not installed: pip install 'uebench[ray]'") from None
    return ray


def ray_workers(device: str, jobs: int | None, retries: int, address: str | None) -> Workers:
    """Workers on a Ray cluster (started here when no address is given and RAY_ADDRESS is unset)."""
    ray = import_ray()
    owns = not ray.is_initialized()
    if owns:
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        try:
            if address == "local":
                ray.init(address="local", include_dashboard=False, configure_logging=False)
            else:
                ray.init(address=address, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise UserError(f"cannot connect to the Ray cluster at {address} ({err}); start one with "
                            f"'ray start --head' or leave out --ray-address to start a local one") from err
    try:
        return _ray_workers(ray, device, jobs, retries, owns)
    except UserError:
        if owns:
            ray.shutdown()
        raise


def _ray_workers(ray, device: str, jobs: int | None, retries: int, owns: bool) -> Workers:
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if device == "auto":
        device = "cuda" if gpus else "cpu"
    if device.startswith("cuda") and device != "cuda":
        raise UserError(f"--device {device}: on Ray each task gets a GPU of its own; use --device cuda or auto")
    if device not in ("cpu", "cuda"):
        raise UserError(f"bad --device {device!r}: use auto, cpu or cuda with --backend ray")
    if device == "cuda":
        if not gpus:
            raise UserError("--device cuda asked for, but the Ray cluster has no GPU; use --device cpu")
        return Workers("ray", jobs or gpus, "cuda", 1, ray_options={"num_gpus": 1, "num_cpus": 1},
                       retries=retries, owns_ray=owns)
    per_node = max([int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")] or [1])
    threads = max(1, min(per_node, cpus // jobs)) if jobs else 1
    return Workers("ray", jobs or max(1, cpus // threads), "cpu", threads, ray_options={"num_cpus": threads},
                   retries=retries, owns_ray=owns)


def stop(workers: Workers) -> None:
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


def _run_task(index: int, fn: Callable, job: Any, args: tuple, slots: Any = None,
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
        _run_on_ray(tasks, workers, on_result)
    else:
        _run_local(tasks, workers, on_result)


class _Attempts:
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


def _warn(error: BaseException, count: int) -> None:
    from tqdm.auto import tqdm
    tqdm.write(f"uebench: a worker died ({type(error).__name__}); running {count} task(s) again", file=sys.stderr)


def _run_local(tasks: list[Task], workers: Workers, deliver: Callable[[int, Any], None]) -> None:
    pending = set(range(len(tasks)))

    def settle(index: int, result: Any) -> None:
        pending.discard(index)
        deliver(index, result)

    attempts = _Attempts(tasks, workers.retries, settle)
    with tempfile.TemporaryDirectory(prefix="uebench-started-") as started_dir:
        while pending:
            fresh = [i for i in sorted(pending) if not attempts.deaths[i]]
            # suspects of an earlier death run alone, once nothing else is left
            for batch in [fresh] if fresh else [[i] for i in sorted(pending)]:
                started = Path(started_dir) / uuid.uuid4().hex
                started.mkdir()
                error = _local_round(tasks, batch, workers, started, settle)
                if error is None:
                    continue
                lost = [i for i in batch if i in pending and not attempts.recovered(i)]
                charged = [i for i in lost if (started / str(i)).exists()] or lost
                again = [i for i in charged if attempts.died(i, error)]
                _warn(error, len(again) + len(set(lost) - set(charged)))


def _local_round(tasks: list[Task], batch: list[int], workers: Workers, started: Path,
                 settle: Callable[[int, Any], None]) -> BaseException | None:
    """Run ``batch`` through one joblib call; returns the error if a worker died."""
    from joblib import Parallel, delayed
    with _slot_queue(workers) as slots:
        calls = (delayed(_run_task)(i, tasks[i].fn, tasks[i].job, tasks[i].args, slots, workers.slots,
                                    started / str(i), os.getpid()) for i in batch)
        results: Iterator = iter(Parallel(n_jobs=workers.jobs, backend=workers.backend,
                                          return_as="generator_unordered")(calls))
        while True:
            try:
                index, result = next(results)
            except StopIteration:
                return None
            except Exception as err:      # TerminatedWorkerError, BrokenProcessPool, ...
                return err
            settle(index, result)


class _slot_queue:
    """A queue holding each device slot once (cross-process for loky); fresh for every joblib
    call, so a slot held by a worker that died is never lost."""

    def __init__(self, workers: Workers):
        self.workers, self.manager, self.queue = workers, None, None

    def __enter__(self):
        if not self.workers.slots:
            return None
        if self.workers.backend == "threading":
            self.queue = queue.Queue()
        else:
            from multiprocessing import Manager
            self.manager = Manager()
            self.queue = self.manager.Queue()
        for slot in range(len(self.workers.slots)):
            self.queue.put(slot)
        return self.queue

    def __exit__(self, *exc) -> None:
        if self.manager is not None:
            self.manager.shutdown()


def _run_on_ray(tasks: list[Task], workers: Workers, deliver: Callable[[int, Any], None]) -> None:
    import ray
    remote = ray.remote(_run_task).options(max_retries=0, **workers.ray_options)
    attempts = _Attempts(tasks, workers.retries, deliver)
    waiting: deque[int] = deque(range(len(tasks)))
    running: dict[Any, int] = {}
    while waiting or running:
        while waiting and len(running) < workers.jobs:
            i = waiting.popleft()
            running[remote.remote(i, tasks[i].fn, tasks[i].job, tasks[i].args)] = i
        done, _ = ray.wait(list(running), num_returns=1)
        i = running.pop(done[0])
        try:
            _, result = ray.get(done[0])
        except ray.exceptions.RayError as err:    # the worker or its node died
            if not attempts.recovered(i) and attempts.died(i, err):
                _warn(err, 1)
                waiting.append(i)
            continue
        deliver(i, result)


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
