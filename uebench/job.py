"""What a worker process needs to do a task: the job description, the data, a context.

A :class:`Job` is pickled to every worker (local processes or Ray actors) with each task;
a worker loads the dataset once and builds a :class:`~uebench.context.Context` per poison
set, defense preparation and cell.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from uebench.context import Context
from uebench.data import Dataset, Splits, load_dataset, make_splits, to_tensor
from uebench.guard import install_interrupt_flag
from uebench.plan import RunSpec
from uebench.presets import TableConfig
from uebench.protocols import get_protocol
from uebench.registry import load_plugin


@dataclass
class Job:
    """What a worker needs to make a poison set or run a cell (picklable)."""

    plan_spec: RunSpec
    config: TableConfig
    table_dir: Path
    cache_dir: Path
    device: str
    threads: int
    progress: bool
    slot: int | None = None    # the local worker slot (one per GPU) the task holds, if any


_DATA: dict[tuple, tuple[Dataset, Splits]] = {}


def data_key(spec: RunSpec, cfg: TableConfig) -> tuple:
    return (cfg.dataset, spec.data_root, cfg.train_subset, cfg.test_subset, cfg.n_reference,
            cfg.n_protected, cfg.split_seed)


def remember_data(job: Job, dataset: Dataset, splits: Splits) -> None:
    """Let tasks run in this process (the driver) use data it has already loaded."""
    _DATA[data_key(job.plan_spec, job.config)] = (dataset.without_test(), splits)


def _load(job: Job) -> Dataset:
    cfg = job.config
    return load_dataset(cfg.dataset, job.plan_spec.data_root, False, cfg.train_subset, cfg.test_subset,
                        cfg.split_seed)


def worker_data(job: Job) -> tuple[Dataset, Splits]:
    """The dataset's training part and its split, loaded once per worker process. The test
    images are left out: methods run beside this cache (see :func:`test_split`)."""
    cfg, key = job.config, data_key(job.plan_spec, job.config)
    if key not in _DATA:
        ds = _load(job).without_test()
        _DATA[key] = (ds, make_splits(ds.y_train, cfg.n_reference, cfg.n_protected, cfg.split_seed))
    return _DATA[key]


def test_split(job: Job) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images and labels, read from disk for one evaluation, after the defense's
    ``fit`` has returned: nothing alive while a method's code runs holds them (a plugin that
    opens the dataset's files itself is outside what the benchmark can promise)."""
    ds = _load(job)
    return to_tensor(ds.x_test), torch.from_numpy(ds.y_test)


def setup_worker(job: Job) -> None:
    install_interrupt_flag()     # a real Ctrl-C stops the run; a method's own KeyboardInterrupt does not
    torch.set_num_threads(job.threads)
    for plugin in job.plan_spec.plugins:   # file plugins must be imported in every worker
        load_plugin(plugin)


def make_context(job: Job, dataset: Dataset, seed: int, artifact_dir: Path | None = None,
                 train_indices: torch.Tensor | None = None) -> Context:
    cfg = job.config
    return Context(device=torch.device(job.device), seed=seed, num_classes=dataset.num_classes,
                   image_shape=dataset.image_shape, model=cfg.model, train=cfg.train, protocol=cfg.protocol,
                   contrastive=get_protocol(cfg.protocol).settings(cfg),
                   dataset={**dataset.identity(), "n_reference": cfg.n_reference, "n_protected": cfg.n_protected,
                            "split_seed": cfg.split_seed},
                   cache_dir=job.cache_dir, artifact_dir=artifact_dir, train_indices=train_indices,
                   progress=job.progress)
