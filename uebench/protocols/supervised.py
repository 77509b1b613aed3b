"""The supervised protocol: the shared training recipe (:mod:`uebench.train`) on the labelled,
defended training set, the defense's ``augment`` and ``loss`` hooks on every batch."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from uebench.protocols.base import Protocol
from uebench.train import train_supervised

if TYPE_CHECKING:
    import torch.nn as nn

    from uebench.context import Context
    from uebench.records import TableInfo


class Supervised(Protocol):
    name = "supervised"
    metric = "clean test accuracy"

    def fit(self, x: torch.Tensor, y: torch.Tensor, ctx: "Context", defense: Any,
            arch: str | None) -> "nn.Module":
        torch.manual_seed(ctx.seed)       # the initial weights depend on the seed only
        model = ctx.make_model(arch)
        return train_supervised(model, x, y, ctx.train, ctx.device, ctx.seed, defense,
                                progress=lambda **kw: ctx.pbar(**kw))

    def length(self, table: "TableInfo") -> str:
        return f"{table.train['epochs']} epochs"

    def describe(self, table: "TableInfo") -> str:
        t = table.train
        return (f"supervised; victim `{table.model}` trained {t['epochs']} epochs, SGD lr {t['lr']} "
                f"({t['schedule']}), momentum {t['momentum']}{' Nesterov' if t['nesterov'] else ''}, weight decay "
                f"{t['weight_decay']}, batch {t['batch_size']}, random crop (pad {t['crop_pad']} at 32 px, "
                f"{t.get('crop_fill', 'reflect')} padding) + flip; preset `{table.preset}`.")
