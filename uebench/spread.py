"""The seeds' spread: which defenses a table cannot rank apart from the best of their row.

A cell is one training run per seed, and some cells move by more over seeds than the differences
they are read for. Where the best defense of an attack's row and another defense both have two or
more seeds, the other one is marked as within the spread when the best's mean exceeds its mean by
at most the larger of the two cells' standard deviations over seeds: nobody should read that
difference as a ranking. Cells with one seed carry no spread and are never marked.
"""
from __future__ import annotations

import numpy as np

MARK = "≈"
LEGEND = (f"{MARK}: within the seeds' spread of the row's best (its mean is below the best's by at most the "
          f"larger standard deviation over seeds of the two cells; cells with two or more seeds)")


def within_spread(scores: dict[tuple[str, str], list[float]], cols: list[str],
                  best_of: dict[str, str]) -> set[tuple[str, str]]:
    """The (attack, defense) cells within the seeds' spread of ``best_of[attack]``, the best cell
    of each ranked row (the best itself is not included)."""
    tied = set()
    for attack, best in best_of.items():
        top = scores.get((attack, best), [])
        if len(top) < 2:
            continue
        for defense in cols:
            values = scores.get((attack, defense), [])
            if defense == best or len(values) < 2:
                continue
            gap = np.mean(top) - np.mean(values)
            if gap <= max(np.std(top, ddof=1), np.std(values, ddof=1)):
                tied.add((attack, defense))
    return tied
