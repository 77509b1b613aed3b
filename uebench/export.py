"""Tables for papers and notebooks, from the records alone.

    import uebench
    df = uebench.load_table("results")                        # every table, long format
    df = uebench.load_table("results", table="supervised-smallcnn-15ep-a99dd5")
    df.pivot(index="attack", columns="defense", values="mean")

``uebench export --format csv|json|latex [--table ID]`` writes the same numbers: mean ± std
(percent, over the seeds that finished) per cell and poison ratio (a ``poison_ratio`` column; one
LaTeX table per ratio), and each table's protocol (in the LaTeX
caption, and a field of the JSON).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from uebench.leaderboard import best_defenses, collect, gather, protocol_text, ratio_heading, ratios_of, title_of
from uebench.plan import CLEAN, NONE
from uebench.protocols import get_protocol
from uebench.ratio import FULL
from uebench.registry import UserError
from uebench.spread import within_spread

COLUMNS = ["dataset", "table", "protocol", "model", "preset", "poison_ratio", "attack", "budget", "defense", "metric",
           "mean", "std", "seeds", "outdated", "within_spread"]
FORMATS = ("csv", "json", "latex")


def load_table(results_dir: str | Path = "results", table: str | None = None) -> pd.DataFrame:
    """One row per cell (dataset, table, poison ratio, attack, defense) with finished seeds: ``mean``
    and ``std`` of the table's ``metric`` in percent (clean test accuracy; a detection table's
    detector AUROC), std NaN for one seed, ``seeds`` their count.
    ``poison_ratio``: the poisoned fraction of the protected split (1: all of it; the clean row,
    which has no poison, is listed once, at 1); cells of different ratios are never averaged.
    ``outdated``: the cell was made by an earlier version of its attack's or defense's code (the
    leaderboard's †), so ``uebench run`` would redo it. ``within_spread``: the cell is within the
    seeds' spread of its row's best (the leaderboard's ≈, ``uebench/spread.py``)."""
    rows = []
    for (dataset, table_id), entries in collect(Path(results_dir))[0].items():
        if table is not None and table_id != table:
            continue
        ratios = ratios_of(entries)
        for ratio in ratios:
            view = gather(entries, ratio=ratio)
            tied = within_spread(view.scores, view.cols, best_defenses(view))
            for attack in view.rows:
                if attack == CLEAN and ratio != ratios[0]:
                    continue                       # no poison, no ratio: listed once, at 1
                for defense in view.cols:
                    values = 100 * np.asarray(view.scores[(attack, defense)])
                    if len(values):
                        rows.append([dataset, table_id, view.table.protocol, view.table.model, view.table.preset,
                                     FULL if attack == CLEAN else ratio, attack, view.threat.get(attack, ""),
                                     defense, metric_of(view), values.mean(),
                                     values.std(ddof=1) if len(values) > 1 else np.nan,
                                     len(values), (attack, defense) in view.outdated, (attack, defense) in tied])
    frame = pd.DataFrame(rows, columns=COLUMNS)
    if table is not None and frame.empty:
        known = sorted({table_id for _, table_id in collect(Path(results_dir))[0]})
        raise UserError(f"no finished cells in table {table!r} under {results_dir}; tables: {', '.join(known) or 'none'}")
    return frame


def metric_of(view) -> str:
    """What a table's numbers are, as its protocol names them."""
    return get_protocol(view.table.protocol).metric


def export(results_dir: str | Path, fmt: str, table: str | None = None) -> str:
    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}: use {', '.join(FORMATS)}")
    frame = load_table(results_dir, table)
    if fmt == "csv":
        return frame.to_csv(index=False, float_format="%.2f")
    protocols = {table_id: (title_of(gather(entries).table), protocol_text(gather(entries).table))
                 for (_, table_id), entries in collect(Path(results_dir))[0].items() if table_id in set(frame.table)}
    if fmt == "json":
        return json.dumps({"tables": {t: {"title": title, "protocol": text} for t, (title, text) in protocols.items()},
                           "cells": json.loads(frame.to_json(orient="records", double_precision=4))}, indent=1) + "\n"
    return "\n".join(latex_table(cells, *protocols[t], ratio) for t in sorted(protocols)
                     for ratio, cells in latex_parts(frame[frame.table == t]))


def latex_parts(cells: pd.DataFrame) -> list[tuple[float, pd.DataFrame]]:
    """One LaTeX table per poison ratio, 1 first; each ratio's table below 1 repeats the clean row."""
    ratios = sorted(set(cells.poison_ratio), reverse=True)
    clean = cells[cells.attack == CLEAN]
    return [(r, cells[cells.poison_ratio == r] if r == FULL
             else pd.concat([clean, cells[(cells.poison_ratio == r) & (cells.attack != CLEAN)]])) for r in ratios]


def latex_table(cells: pd.DataFrame, title: str, protocol: str, ratio: float = FULL) -> str:
    """A booktabs table: attacks down, defenses across, mean ± std (the clean row first)."""
    def text(row) -> str:
        return f"{row['mean']:.1f}" + ("" if np.isnan(row["std"]) else f" $\\pm$ {row['std']:.1f}")

    attacks = list(dict.fromkeys(cells.attack))                 # the leaderboard's order: clean first
    defenses = sorted(set(cells.defense), key=lambda d: (d != NONE, d))
    grid = {(row["attack"], row["defense"]): text(row) for row in cells.to_dict("records")}
    def escape(value) -> str:
        return "".join("\\" + c if c in "_%&#${}" else c for c in str(value))

    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{escape(title + ratio_heading(ratio))}: {escape(cells.metric.iloc[0])} (\%), mean $\pm$ std over seeds. "
             rf"Protocol: {escape(protocol.replace('`', ''))}}}",
             r"\begin{tabular}{l" + "c" * len(defenses) + "}", r"\toprule",
             "attack & " + " & ".join(escape(d) for d in defenses) + r" \\", r"\midrule"]
    for attack in attacks:
        lines.append(escape(attack) + " & " + " & ".join(grid.get((attack, d), "--") for d in defenses) + r" \\")
        if attack == CLEAN:
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)
