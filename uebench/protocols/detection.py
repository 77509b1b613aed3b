"""The detection protocol: can protected images be told from clean ones at all?

``uebench run --protocol detection``. The table's columns are detectors (``uebench list
detectors``; :class:`uebench.api.Detector`), its rows the attacks. In each cell the protected
split is mixed: a seeded half of it (``POISONED_FRACTION``, the draw of ``--poison-ratio``,
:func:`uebench.ratio.poisoned_indices`) carries the attack's poison, the rest stays clean. The
detector gets those images with their labels and the clean reference split, never the mask,
and returns one score per image; the cell records the AUROC of the scores against the mask
(the table's number) and the accuracy of the detector's own yes/no flags, with the mask's count
and hash in ``notes["mask"]``. The test split is never read. The clean row mixes clean with clean:
its AUROC is chance (0.5) for any detector, the reference a row is read against.

A detector that trains a network trains it with its own recipe (its hyperparameters; the shared
trainer ``uebench.train.train_supervised``), cross-fitted by ``uebench.toolkit.heldout``.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

import torch

from uebench.protocols.base import Measured
from uebench.protocols.supervised import Supervised
from uebench.records import Metrics

if TYPE_CHECKING:
    from uebench.context import Context
    from uebench.records import TableInfo

POISONED_FRACTION = 0.5


def auroc(scores: torch.Tensor, is_poisoned: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` against the boolean mask (scikit-learn's, ties
    counted half); 0.5 when the mask has one class only (the clean row's mix has no poison)."""
    from sklearn.metrics import roc_auc_score
    if is_poisoned.all() or not is_poisoned.any():
        return 0.5
    return float(roc_auc_score(is_poisoned.numpy(), scores.double().numpy()))


class Detection(Supervised):
    name = "detection"
    metric = "detection AUROC"
    column = "detector"

    def measure(self, defense: Any, x: torch.Tensor, y: torch.Tensor, clean: torch.Tensor,
                reference: tuple, ctx: "Context",
                test_split: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> Measured:
        from uebench.ratio import poison_info, poisoned_indices
        n = len(y)
        chosen = poisoned_indices(n, POISONED_FRACTION, ctx.dataset.get("split_seed", 0), ctx.seed)
        is_poisoned = torch.zeros(n, dtype=torch.bool)
        is_poisoned[chosen] = True
        mixed = torch.where(is_poisoned[:, None, None, None], x, clean)
        ctx.notes["mask"] = poison_info(n, POISONED_FRACTION, chosen)
        start = time.perf_counter()
        scores = defense.score(mixed.clone(), y.clone(), (reference[0].clone(), reference[1].clone()), ctx)
        fit_s = time.perf_counter() - start
        scores = torch.as_tensor(scores).detach().to("cpu").reshape(-1)
        if scores.shape != (n,) or not torch.isfinite(scores.double()).all():
            raise ValueError(f"{defense.name}.score must return one finite score per image ({n}), got shape "
                             f"{tuple(scores.shape)}" + ("" if scores.shape != (n,) else " with NaN or inf"))
        flags = torch.as_tensor(defense.flag(scores)).reshape(-1).bool()
        return Measured(Metrics(auroc=auroc(scores, is_poisoned), flag_acc=float((flags == is_poisoned).float().mean()),
                                n_train=n, n_poisoned=int(is_poisoned.sum())), fit_s)

    def value(self, metrics: Metrics) -> float | None:
        return metrics.auroc

    def length(self, table: "TableInfo") -> str:
        return "half of each split poisoned"

    def describe(self, table: "TableInfo") -> str:
        return (f"detection; each cell mixes the protected split, a seeded half poisoned "
                f"({POISONED_FRACTION:g}), and a detector scores every image without the mask; the table shows the AUROC "
                f"of its scores against the mask (50: chance; the clean row mixes clean with clean). A detector that "
                f"trains a network trains it with its own recipe (its hyperparameters, in each record); the test split is "
                f"never read; preset `{table.preset}`.")
