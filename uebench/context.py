"""What a method gets to work with: device, seed, data shape, the shared trainer and a cache.

A :class:`Context` is built by the runner for each poison set and each cell. Methods
never see the test set through it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, TypeVar

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from uebench.models import create_model
from uebench.protocols import get_protocol
from uebench.storage import code_fingerprint, content_key, write_atomic
from uebench.train import TrainConfig

T = TypeVar("T")


@dataclass
class Context:
    device: torch.device
    seed: int
    num_classes: int
    image_shape: tuple[int, int, int]          # (C, H, W)
    model: str = "smallcnn"                    # victim (and default surrogate) architecture
    train: TrainConfig = field(default_factory=TrainConfig)
    protocol: str = "supervised"               # a name in uebench.protocols.PROTOCOLS
    contrastive: dict = field(default_factory=dict)  # the table's SimCLR settings (contrastive protocol)
    dataset: dict = field(default_factory=dict)  # the dataset's identity, for cache keys
    cache_dir: Path | None = None
    artifact_dir: Path | None = None           # the cell's own folder, for a method's figures or files
    # positions of the protected images in the dataset's training split (for an attack that
    # imports a released poison set); set while a poison set is made
    train_indices: torch.Tensor | None = None
    progress: bool = True
    # (clean, protected) images of k protected images, for a defense whose threat model grants
    # them (Defense.leaked_pairs); None for every other defense and for attacks
    leaked_pairs: tuple | None = None
    notes: dict = field(default_factory=dict)  # output only: methods add facts for the record here
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
        """Train a classifier with the table's protocol (:mod:`uebench.protocols`); ``overrides``
        change TrainConfig fields (the supervised recipe's)."""
        cfg = replace(self.train, **overrides)
        ctx = replace(self, train=cfg) if overrides else self
        return get_protocol(self.protocol).train(x, y, ctx, defense=defense, arch=arch)

    def cached(self, key: dict, build: Callable[[], T], name: str = "object") -> T:
        """Return ``build()``, stored on disk under a hash of ``key`` and reused afterwards.

        Put everything that changes the result into ``key`` (method, hyperparameters,
        dataset, split, seed); the dataset identity, the seed and the fingerprint of the code
        that defines ``build`` (the caller's module) are added automatically.
        """
        full_key = {"key": key, "dataset": self.dataset, "seed": self.seed, "code": code_fingerprint(build)}
        if self.cache_dir is None:
            return self._build(build)
        path = Path(self.cache_dir) / name / f"{content_key(full_key)}.pt"
        if path.exists():
            try:
                return torch.load(path, map_location="cpu", weights_only=False)["value"]
            except Exception:  # a corrupt cache entry is rebuilt, never trusted
                path.unlink(missing_ok=True)
        value = self._build(build)
        write_atomic(path, lambda tmp: torch.save({"key": full_key, "value": value}, tmp))
        return value

    def _build(self, build: Callable[[], T]) -> T:
        """``build()`` with torch's global generators put back afterwards: building draws from
        them and loading does not, so what the caller draws next must not depend on whether
        the cache held the entry (a cold and a warm cache make the same poison)."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return build()
