"""Standard training: the no-defense column."""
from __future__ import annotations

from dataclasses import dataclass

from uebench.api import Defense


@dataclass
class NoDefense(Defense):
    """Train on the data as given, with the shared recipe (crop, flip, SGD)."""

    name = "none"
    paper = "standard training"
