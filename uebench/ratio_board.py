"""The poison ratio in the leaderboard (ratio.py): what a ratio's table says, and accuracy against the ratio.

Used by leaderboard.py, site.py and export.py; it reads the records through leaderboard.gather
(imported where used: leaderboard.py imports this module).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from uebench.plan import CLEAN, NONE
from uebench.ratio import CLEAN_PART, FULL, ratio_text

if TYPE_CHECKING:
    from uebench.leaderboard import Entry



def ratio_heading(ratio: float) -> str:
    return "" if ratio == FULL else f" · poison ratio {ratio_text(ratio)}"


def ratio_lines(view, entries: list[Entry]) -> list[str]:
    """The bullet that says what a ratio below 1 means in this table (none at ratio 1)."""
    from uebench.leaderboard import at_ratio
    if view.ratio == FULL:
        return []
    draws = [r.poison for _, r in at_ratio(entries, view.ratio) if r.poison and "n_poisoned" in r.poison]
    count = (f"{draws[0]['n_poisoned']} of the {draws[0]['n_protected']} protected images" if draws
             else "that fraction of the protected images")
    clean = f"{draws[0]['n_clean']} clean images" if draws else "clean images"
    return [f"- **Poison ratio {ratio_text(view.ratio)}**: {count} (a seeded draw, the same for every attack and "
            f"defense of a seed) carry the attack's poison, crafted on the whole protected split; the others are "
            f"clean. `{CLEAN_PART}`: the victim trained on those {clean} alone; `{CLEAN}`: no poison (the same "
            f"cells as at ratio 1)."]


def ratio_frame(entries: list[Entry], defense: str = NONE) -> pd.DataFrame:
    """Mean accuracy (%) under ``defense`` per row (clean, clean-part, the attacks) and poison ratio
    (columns, upwards); the clean row, which has no ratio, has its one value in every column."""
    from uebench.leaderboard import gather, ratios_of
    ratios = sorted(ratios_of(entries))
    views = {ratio: gather(entries, ratio=ratio) for ratio in ratios}
    rows = list(dict.fromkeys(a for ratio in ratios for a in views[ratio].rows))
    rows = [a for a in (CLEAN, CLEAN_PART) if a in rows] + [a for a in rows if a not in (CLEAN, CLEAN_PART)]
    def mean(view, attack: str) -> float:
        values = view.scores.get((attack, defense), [])
        return 100 * float(np.mean(values)) if values else np.nan
    return pd.DataFrame([[mean(views[ratio], a) for ratio in ratios] for a in rows],
                        index=pd.Index(rows, name="attack"),
                        columns=pd.Index([ratio_text(r) for r in ratios], name="poison ratio"))


def render_ratios(entries: list[Entry]) -> str:
    """The no-defense accuracy of every row against the poison ratio: a table and its figure."""
    from uebench.leaderboard import gather, md, ratios_of, title_of
    table = gather(entries, ratio=ratios_of(entries)[-1]).table
    frame = ratio_frame(entries)
    clean = frame.loc[CLEAN].iloc[0] if CLEAN in frame.index else np.nan
    shown = frame.drop(index=CLEAN, errors="ignore")
    df = pd.DataFrame([[md(a)] + ["" if np.isnan(v) else f"{v:.1f}" for v in shown.loc[a]] for a in shown.index],
                      columns=["attack", *[f"ratio {c}" for c in shown.columns]])
    name = f"ratio-{table.dataset['name']}-{table.id}.png"
    return "\n".join([
        f"### {md(title_of(table))}: accuracy against the poison ratio (`{table.id}`)", "",
        f"No defense, mean over seeds (%). Clean data (no poison): {'' if np.isnan(clean) else f'{clean:.1f}'}; "
        f"`{CLEAN_PART}`: trained on the clean part alone, the reference a ratio is read against (empty at ratio 1).",
        "", df.to_markdown(index=False, disable_numparse=True), "",
        f"![accuracy against the poison ratio of {table.id}]({name})", ""])
