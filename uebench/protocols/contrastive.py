"""The contrastive protocol: a SimCLR encoder trained without labels on the (defended) training
images, then a linear probe on its frozen features with the training labels; the victim is
backbone + probe, so a cell measures clean test accuracy as for the supervised protocol.

The recipe and its pieces (SimCLR's views and loss, the probe, :class:`ContrastiveConfig`) are
in :mod:`uebench.toolkit.contrastive`, which the contrastive attacks (UCL, TUE) share; it is
imported when a contrastive table trains (it needs kornia). A table's settings (overrides of
``ContrastiveConfig``) are its config's ``contrastive`` dict.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from uebench.protocols.base import Protocol

if TYPE_CHECKING:
    import torch.nn as nn

    from uebench.context import Context
    from uebench.records import TableInfo


class Contrastive(Protocol):
    name = "contrastive"
    metric = "clean test accuracy"     # of backbone + linear probe, the classifier the protocol returns

    def fit(self, x: torch.Tensor, y: torch.Tensor, ctx: "Context", defense: Any,
            arch: str | None) -> "nn.Module":
        """SimCLR on ``x`` without labels, then a linear probe with ``y``; the settings used
        go to ``ctx.notes["contrastive_protocol"]``."""
        from uebench.toolkit import contrastive as simclr
        cfg = simclr.contrastive_config(ctx)
        ctx.notes["contrastive_protocol"] = cfg.as_dict() | {"arch": arch or cfg.arch or ctx.model}
        torch.manual_seed(ctx.seed)
        classifier, model = simclr.make_simclr(ctx, arch, cfg)
        simclr.pretrain_simclr(model, x, cfg, ctx, defense, y)
        return simclr.fit_linear_probe(classifier, x, y, cfg, ctx)

    def settings(self, config: Any) -> dict:
        return dict(config.contrastive)

    def length(self, table: "TableInfo") -> str:
        return f"{table.contrastive['epochs']} SimCLR epochs" if "epochs" in table.contrastive else "SimCLR"

    def describe(self, table: "TableInfo") -> str:
        # SimCLR, then a linear probe: the supervised recipe is unused
        return (f"contrastive; a SimCLR encoder `{table.model}` trained without labels on the (defended) "
                f"training set, then a linear probe on its frozen features with the training labels; settings "
                f"that differ from the published SimCLR protocol: {table.contrastive or 'none'}; "
                f"preset `{table.preset}`.")
