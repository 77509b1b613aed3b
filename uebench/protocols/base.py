"""What an evaluation protocol is: :class:`Protocol`, the interface every protocol implements."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar

from uebench.train import accuracy

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from uebench.context import Context
    from uebench.records import TableInfo


class Protocol:
    """How a table's victim learns from the (defended) training set, and what the table reports.

    One subclass per protocol, chosen by the table's ``protocol`` name
    (:data:`uebench.protocols.PROTOCOLS`); nothing outside ``uebench/protocols/`` asks which
    protocol a table has. A protocol says:

    - ``name``: what tables, records and ``--protocol`` call it;
    - ``metric``: what a cell measures on the clean test set, as the leaderboard names it;
    - :meth:`train`: the victim, a classifier of [0, 1] images (``Context.train_classifier``);
    - :meth:`evaluate`: the cell's score of that victim on labelled images;
    - :meth:`settings`: its own settings in a table config, which records and table ids keep;
    - :meth:`length` and :meth:`describe`: how a table's title and text name its training.
    """

    name: ClassVar[str] = ""
    metric: ClassVar[str] = "clean test accuracy"

    def train(self, x: "torch.Tensor", y: "torch.Tensor", ctx: "Context", defense: Any = None,
              arch: str | None = None) -> "nn.Module":
        """The victim trained on ``x, y`` (after the defense's ``purify``), with the defense's
        training hooks; in eval mode. A defense that does not apply to this protocol is refused."""
        if defense is not None and self.name not in getattr(defense, "protocols", (self.name,)):
            raise ValueError(f"defense {defense.name!r} does not apply to the {self.name} protocol "
                             f"(it declares protocols {defense.protocols})")
        return self.fit(x, y, ctx, defense, arch)

    def fit(self, x: "torch.Tensor", y: "torch.Tensor", ctx: "Context", defense: Any,
            arch: str | None) -> "nn.Module":
        """The protocol's training, once :meth:`train` has checked the defense."""
        raise NotImplementedError

    def evaluate(self, model: "nn.Module", x: "torch.Tensor", y: "torch.Tensor",
                 transform: Callable[["torch.Tensor"], "torch.Tensor"] | None = None) -> float:
        """The score of ``model`` on ``x, y`` (``transform``: the defense's test-time transform),
        in [0, 1]; by default top-1 accuracy."""
        return accuracy(model, x, y, transform=transform)

    def settings(self, config: Any) -> dict:
        """This protocol's own settings in a table config (``presets.TableConfig``): what the
        record's ``table`` and the table id keep, and the context hands to :meth:`fit`."""
        return {}

    def length(self, table: "TableInfo") -> str:
        """How long the victims trained, for a table's title (e.g. "15 epochs")."""
        raise NotImplementedError

    def describe(self, table: "TableInfo") -> str:
        """How the table's victims were trained, in one sentence (markdown)."""
        raise NotImplementedError
