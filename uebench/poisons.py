"""The poison cache: each poison set is made once per (attack, hyperparameters, data, seed, code).

Stage 1 of a run makes every poison set its pending cells need; each cell then loads its
own. A claim file keeps two processes (workers, or two runs on one cluster) from making
the same poison set at once: the second waits and takes the first one's file.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from uebench.api import hparams
from uebench.claims import Claim
from uebench.data import Dataset, to_tensor
from uebench.job import Job, make_context, setup_worker, worker_data
from uebench.plan import ConfiguredMethod
from uebench.storage import content_key, write_atomic


def poison_path(job: Job, attack: ConfiguredMethod, seed: int, dataset: Dataset) -> Path:
    key = {"attack": attack.name, "hparams": hparams(attack.instance), "dataset": dataset.identity(),
           "n_reference": job.config.n_reference, "n_protected": job.config.n_protected,
           "split_seed": job.config.split_seed, "seed": seed, "model": crafting_model(job),
           "code": attack.code}
    return job.cache_dir / "poisons" / f"{attack.name}-{content_key(key)}.pt"


def crafting_model(job: Job) -> str:
    """The architecture ``ctx.model`` names while a poison is crafted: the table's ``--surrogate``,
    else the victim. The cache is keyed on it, not on the victim, so tables of other victims
    with the same surrogate share one poison set (and a table without one keeps its keys)."""
    return job.config.surrogate or job.config.model


def make_poison(job: Job, attack: ConfiguredMethod, seed: int, remake: bool = False) -> dict:
    """Generate (or load) one poison set; returns {"x", "seconds", "notes"}. ``remake``
    generates it even when it is cached (``--force``)."""
    setup_worker(job)
    dataset, splits = worker_data(job)
    path = poison_path(job, attack, seed, dataset)
    cached = None if remake else cached_poison(path)
    if cached is not None:
        return cached
    claim = Claim(path)
    while claim.acquire() is not None:      # another run is making this very poison: use its file
        time.sleep(1)
    try:
        cached = None if remake else cached_poison(path)
        if cached is not None:
            return cached
        x = to_tensor(dataset.x_train[splits.protected])
        y = torch.from_numpy(dataset.y_train[splits.protected])
        ctx = make_context(job, dataset, seed, train_indices=torch.from_numpy(splits.protected))
        ctx.model = crafting_model(job)      # the surrogate of every attack whose own setting is unset
        start = time.perf_counter()
        poisoned = attack.instance(x, y, ctx)
        entry = {"x": poisoned, "seconds": time.perf_counter() - start, "notes": ctx.notes}
        write_atomic(path, lambda tmp: torch.save(entry, tmp))
        return entry
    finally:
        claim.release()


def cached_poison(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        path.unlink(missing_ok=True)     # half-written or corrupt: make it again
        return None


def craft_poison(job: Job, attack: ConfiguredMethod, seed: int) -> None:
    """Stage 1's poison task: make the poison set (again, under ``--force``) for the cells to load."""
    make_poison(job, attack, seed, remake=job.plan_spec.force)
