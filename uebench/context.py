"""What a method gets to work with: device, seed, data shape, the shared trainer and a cache.

A :class:`Context` is built by the runner for each poison set and each cell. Methods
never see the test set through it.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from uebench.models import create_model
from uebench.train import TrainConfig, train_supervised

T = TypeVar("T")


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


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write via a temporary file and rename, so a killed process never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@dataclass
class Context:
    device: torch.device
    seed: int
    num_classes: int
    image_shape: tuple[int, int, int]          # (C, H, W)
    model: str = "smallcnn"                    # victim (and default surrogate) architecture
    train: TrainConfig = field(default_factory=TrainConfig)
    protocol: str = "supervised"               # supervised | contrastive
    dataset: dict = field(default_factory=dict)  # the dataset's identity, for cache keys
    cache_dir: Path | None = None
    artifact_dir: Path | None = None           # where a cell may write figures
    progress: bool = True
    notes: dict = field(default_factory=dict)  # methods add facts for the record here
    # first images of what a defense made of the training set (e.g. "purified"); the runner
    # draws them under the clean and unlearnable images (which the defense never sees)
    previews: dict = field(default_factory=dict)

    # -- helpers for methods -------------------------------------------------------
    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from the cell seed (``offset`` separates streams)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + offset)

    def make_model(self, arch: str | None = None, num_classes: int | None = None) -> nn.Module:
        return create_model(arch or self.model, self.image_shape[0], num_classes or self.num_classes)

    def pbar(self, iterable=None, total: int | None = None, desc: str = "") -> tqdm:
        return tqdm(iterable, total=total, desc=desc, leave=False, disable=not self.progress,
                    dynamic_ncols=True)

    def train_classifier(self, x: torch.Tensor, y: torch.Tensor, defense=None,
                         arch: str | None = None, **overrides) -> nn.Module:
        """Train a classifier with the table's protocol; ``overrides`` change TrainConfig fields."""
        cfg = replace(self.train, **overrides)
        if self.protocol == "contrastive":
            from uebench.contrastive import train_contrastive  # the contrastive protocol (SimCLR + probe)
            return train_contrastive(x, y, self, defense=defense, arch=arch)
        torch.manual_seed(self.seed)       # the initial weights depend on the seed only
        model = self.make_model(arch)
        return train_supervised(model, x, y, cfg, self.device, self.seed, defense,
                                progress=lambda **kw: self.pbar(**kw))

    def cached(self, key: dict, build: Callable[[], T], name: str = "object") -> T:
        """Return ``build()``, stored on disk under a hash of ``key`` and reused afterwards.

        Put everything that changes the result into ``key`` (method, hyperparameters,
        dataset, split, seed); the dataset identity, the seed and the fingerprint of the code
        that defines ``build`` (the caller's module) are added automatically.
        """
        full_key = {"key": key, "dataset": self.dataset, "seed": self.seed, "code": code_fingerprint(build)}
        if self.cache_dir is None:
            return build()
        path = Path(self.cache_dir) / name / f"{content_key(full_key)}.pt"
        if path.exists():
            try:
                return torch.load(path, map_location="cpu", weights_only=False)["value"]
            except Exception:  # a corrupt cache entry is rebuilt, never trusted
                path.unlink(missing_ok=True)
        value = build()
        atomic_torch_save({"key": full_key, "value": value}, path)
        return value
