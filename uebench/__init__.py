"""uebench: a benchmark of unlearnable examples and the countermeasures that break them.

The flow, one module each: data (splits) → attack (poisons, budget-checked, cached) →
defense (purify, transform, train) → evaluate → record (one JSON per cell) → leaderboard.
"""
__version__ = "0.1.0"

import os

# Large CPU tensors on transparent huge pages (PyTorch's own switch, read once, at the first
# allocation, so before torch is imported; worker processes inherit it). A fresh 32 MiB tensor
# otherwise costs ~8,000 page faults: measured, D-VAE's training step 1.12 -> 0.96 s at one thread,
# with bit-identical results (only where memory comes from changes). THP_MEM_ALLOC_ENABLE=0 turns it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from uebench.api import Attack, Defense, Detector, ThreatModel  # noqa: E402
from uebench.registry import ATTACKS, DEFENSES, register_attack, register_defense  # noqa: E402

__all__ = ["Attack", "Defense", "Detector", "ThreatModel", "ATTACKS", "DEFENSES", "register_attack", "register_defense",
           "load_table"]


def __getattr__(name: str):
    """``uebench.load_table`` (pandas), imported on first use so that ``import uebench`` stays light."""
    if name == "load_table":
        from uebench.export import load_table
        return load_table
    raise AttributeError(f"module 'uebench' has no attribute {name!r}")
