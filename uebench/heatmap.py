"""A heatmap per table: attacks × defenses, colour and printed value = clean test accuracy (%);
and, for a table with several poison ratios, accuracy against the ratio (:func:`draw_ratio`).

Drawn with matplotlib (Agg, no display) next to the markdown leaderboard. The PNG carries the
content key of the numbers it was drawn from (a ``uebench-data`` text chunk), so
``uebench leaderboard --check`` can tell a stale picture from a current one without comparing
pixels, which differ between matplotlib and FreeType versions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from uebench.storage import content_key, write_atomic

DATA_KEY = "uebench-data"


def data_key(frame: pd.DataFrame, title: str) -> str:
    """The content key of what a heatmap shows: its title, labels and values (0.1-point precision)."""
    values = [[None if np.isnan(v) else round(float(v), 1) for v in row] for row in frame.to_numpy()]
    return content_key({"title": title, "rows": list(frame.index), "cols": list(frame.columns), "values": values})


def draw(frame: pd.DataFrame, title: str, path: Path) -> None:
    """Draw ``frame`` (rows: attacks with the clean row first; columns: defenses with no defense
    first, or detectors) into the PNG ``path``; the colour bar names ``frame.attrs["metric"]``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = frame.shape
    fig, ax = plt.subplots(figsize=(2.2 + 0.62 * n_cols, 1.2 + 0.36 * n_rows), dpi=110)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#e6e6e6")   # grey: no finished record
    image = ax.imshow(np.ma.masked_invalid(frame.to_numpy(dtype=float)), cmap=cmap, vmin=0, vmax=100,
                      aspect="auto")
    for i in range(n_rows):
        for j in range(n_cols):
            value = frame.iat[i, j]
            if not np.isnan(value):
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7,
                        color="black" if value > 60 else "white")
    ax.set_xticks(range(n_cols), labels=list(frame.columns), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n_rows), labels=list(frame.index), fontsize=8)
    # the clean row and the no-defense column are the references: set them apart
    for position, line in ((0.5, ax.axhline), (0.5, ax.axvline)):
        line(position, color="white", linewidth=2.5)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02).set_label(f"{frame.attrs.get('metric', 'clean test accuracy')} (%)",
                                                                         fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png",
                                               metadata={"Software": None, DATA_KEY: data_key(frame, title)}))
    plt.close(fig)


def draw_ratio(frame: pd.DataFrame, title: str, path: Path) -> None:
    """Accuracy against the poison ratio: one curve per attack (``frame``: rows the clean row,
    ``clean-part`` and the attacks; columns the ratios, upwards), ``clean-part`` (trained on the
    clean part alone, the reference a ratio is read against) dashed black, clean data a grey line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [float(c) for c in frame.columns]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    colors = matplotlib.colormaps["tab20"]
    attacks = [a for a in frame.index if a not in ("clean", "clean-part")]
    for i, attack in enumerate(attacks):
        values = frame.loc[attack].to_numpy(dtype=float)
        ax.plot(ratios, values, marker="o", markersize=4, linewidth=1.4, color=colors(i % 20), label=attack)
    if "clean-part" in frame.index:
        ax.plot(ratios, frame.loc["clean-part"].to_numpy(dtype=float), marker="s", markersize=4, color="black",
                linestyle="--", linewidth=1.8, label="clean part alone")
    if "clean" in frame.index and not np.isnan(frame.loc["clean"].iloc[0]):
        ax.axhline(frame.loc["clean"].iloc[0], color="grey", linestyle=":", linewidth=1.5, label="clean (no poison)")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 100)
    ax.set_xticks(ratios, labels=[str(c) for c in frame.columns], fontsize=8)
    ax.set_xlabel("poison ratio (poisoned fraction of the protected split)", fontsize=8)
    ax.set_ylabel("clean test accuracy (%), no defense", fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png",
                                               metadata={"Software": None, DATA_KEY: data_key(frame, title)}))
    plt.close(fig)


def drawn_from(path: Path) -> str | None:
    """The data key a heatmap PNG was drawn from, or None (missing, unreadable, or not ours)."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            return image.text.get(DATA_KEY)
    except (OSError, ValueError):
        return None
