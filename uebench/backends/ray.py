"""The Ray backend: tasks on a Ray cluster (started here when none is given).

Each task is a Ray task asking for one GPU, or for its CPU threads, and Ray places it. A task
whose worker or node dies fails alone and is charged directly (see :mod:`uebench.workers`).
Ray is imported only when a run asks for it.
"""
from __future__ import annotations

import os
from collections import deque
from typing import Any, Callable

from uebench.registry import UserError
from uebench.workers import Attempts, Task, Workers, run_task, warn_rerun


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


def run_on_ray(tasks: list[Task], workers: Workers, deliver: Callable[[int, Any], None]) -> None:
    import ray
    remote = ray.remote(run_task).options(max_retries=0, **workers.ray_options)
    attempts = Attempts(tasks, workers.retries, deliver)
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
                warn_rerun(err, 1)
                waiting.append(i)
            continue
        deliver(i, result)

