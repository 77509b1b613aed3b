"""The local backend: worker processes on this machine through joblib's loky.

A batch of tasks is one joblib call. Each worker watches the driver from its start (and exits
when it is gone); with GPU slots, each task holds one device from a queue shared across the
processes while it runs. A worker's death aborts the whole call, so the tasks that had started
are suspects and run again one at a time (see :mod:`uebench.workers`).
"""
from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from uebench.workers import Attempts, Task, Workers, exit_with_driver, run_task, warn_rerun


def run_local(tasks: list[Task], workers: Workers, deliver: Callable[[int, Any], None]) -> None:
    pending = set(range(len(tasks)))

    def settle(index: int, result: Any) -> None:
        pending.discard(index)
        deliver(index, result)

    attempts = Attempts(tasks, workers.retries, settle)
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
                warn_rerun(error, len(again) + len(set(lost) - set(charged)))


def _local_round(tasks: list[Task], batch: list[int], workers: Workers, started: Path,
                 settle: Callable[[int, Any], None]) -> BaseException | None:
    """Run ``batch`` through one joblib call; returns the error if a worker died."""
    from joblib import Parallel, delayed, parallel_config
    # every worker watches the driver from its start, also one that never gets a task
    with _slot_queue(workers) as slots, parallel_config(backend=workers.backend, initializer=exit_with_driver,
                                                        initargs=(os.getpid(),)):
        calls = (delayed(run_task)(i, tasks[i].fn, tasks[i].job, tasks[i].args, slots, workers.slots,
                                    started / str(i), os.getpid()) for i in batch)
        # two at least: with one, joblib would run the task in the driver, which it may kill
        results: Iterator = iter(Parallel(n_jobs=max(2, min(workers.jobs, len(batch))),
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
    """A queue holding each device slot once (across loky's processes); fresh for every joblib
    call, so a slot held by a worker that died is never lost."""

    def __init__(self, workers: Workers):
        self.workers, self.manager, self.queue = workers, None, None

    def __enter__(self):
        if not self.workers.slots:
            return None
        from multiprocessing import Manager
        self.manager = Manager()
        self.queue = self.manager.Queue()
        for slot in range(len(self.workers.slots)):
            self.queue.put(slot)
        return self.queue

    def __exit__(self, *exc) -> None:
        if self.manager is not None:
            self.manager.shutdown()

