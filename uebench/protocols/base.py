"""What an evaluation protocol is: :class:`Protocol`, the interface every protocol implements."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, ClassVar, NamedTuple

from uebench.records import Metrics
from uebench.train import accuracy

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from uebench.context import Context
    from uebench.records import TableInfo


class Measured(NamedTuple):
    """What one cell measured, and how long the method's own work took (``timing.fit_s``)."""
    metrics: Metrics
    fit_s: float


class Protocol:
    """How a table's victim learns from the (defended) training set, and what the table reports.

    One subclass per protocol, chosen by the table's ``protocol`` name
    (:data:`uebench.protocols.PROTOCOLS`); nothing outside ``uebench/protocols/`` asks which
    protocol a table has. A protocol says:

    - ``name``: what tables, records and ``--protocol`` call it;
    - ``metric``: what a cell measures on the clean test set, as the leaderboard names it;
    - ``column``: what a table's columns are, ``defense`` (a victim trained through each) or
      ``detector`` (detection); ``all`` and wildcards pick those (:meth:`lists`);
    - :meth:`train`: the victim, a classifier of [0, 1] images (``Context.train_classifier``);
    - :meth:`measure`: what one cell measures (by default: the victim trained through the
      defense, scored with :meth:`evaluate` on the clean test split and its own training images);
    - :meth:`value`: the number of a record's metrics that its table shows;
    - :meth:`settings`: its own settings in a table config, which records and table ids keep;
    - :meth:`length` and :meth:`describe`: how a table's title and text name its training.
    """

    name: ClassVar[str] = ""
    metric: ClassVar[str] = "clean test accuracy"
    column: ClassVar[str] = "defense"

    def lists(self, method: type) -> bool:
        """Whether ``all`` and wildcards pick ``method`` (a defense class) for a table of this
        protocol: the defenses, not the detectors (naming a method always picks it)."""
        from uebench.api import Detector
        return issubclass(method, Detector) == (self.column == "detector")

    def measure(self, defense: Any, x: "torch.Tensor", y: "torch.Tensor", clean: "torch.Tensor",
                reference: tuple, ctx: "Context",
                test_split: Callable[[], tuple["torch.Tensor", "torch.Tensor"]]) -> Measured:
        """One cell: ``defense.fit`` on copies of the training set ``x, y`` (``clean``: the same
        images unpoisoned) and of the clean ``reference`` split, then the victim's score on the
        test split, which ``test_split()`` reads only once the defense's code has returned."""
        start = time.perf_counter()
        # the defense gets copies: one that changes its input in place cannot change what the
        # cell measures its training accuracy on
        model = defense.fit(x.clone(), y.clone(), (reference[0].clone(), reference[1].clone()), ctx)
        fit_s = time.perf_counter() - start
        transform = defense.transform_test if defense.transforms_test else None
        x_test, y_test = test_split()
        return Measured(Metrics(test_acc=self.evaluate(model, x_test, y_test, transform=transform),
                                train_acc=self.evaluate(model, x, y), n_test=len(y_test), n_train=len(y)), fit_s)

    def value(self, metrics: Metrics) -> float | None:
        """The number a table shows for a record's ``metrics`` (in [0, 1])."""
        return metrics.test_acc

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
