"""The leaderboard: a pure function of a results directory.

One table per (dataset, table id), i.e. per protocol, and poison ratio (ratio.py; a ratio below 1
adds its own table, with the clean-part row, and a figure of accuracy against the ratio): rows are
the clean row and the attacks, columns the defenses, cells the clean test accuracy in percent (mean ± std over
seeds, one decimal). The best defense per attack is in bold. The same records always
give byte-identical markdown (no timestamps, everything sorted).
"""
from __future__ import annotations

import functools
import html
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from uebench.heatmap import data_key, draw, draw_ratio, drawn_from
from uebench.plan import CLEAN, NONE
from uebench.protocols import get_protocol
from uebench.ratio import CLEAN_PART, FULL, ratio_of, ratio_text, seed_file
from uebench.ratio_board import ratio_frame, ratio_heading, ratio_lines, render_ratios
from uebench.records import Record, RecordError, TableInfo, iter_records
from uebench.registry import ATTACKS, DEFENSES, safe_segment
from uebench.spread import LEGEND, MARK, within_spread
from uebench.storage import method_fingerprint, write_atomic

Entry = tuple[str, Record]   # a record and its path relative to the results folder


def collect(results_dir: Path) -> tuple[dict[tuple[str, str], list[Entry]], list[tuple[Path, str]]]:
    """Records grouped by (dataset folder, table id), and the unusable ones with the reason:
    one bad record is reported, never a reason to lose the rest of the table."""
    tables: dict[tuple[str, str], list[Entry]] = defaultdict(list)
    unreadable, seen = [], set()
    for path, record in iter_records(results_dir):
        seen.add(path)
        if isinstance(record, RecordError):
            unreadable.append((path, str(record).removeprefix(f"{path}: ")))
        elif record.table is None or record.attack.threat_model is None:   # failed before it was described
            unreadable.append((path, "lacks table" if record.table is None else "lacks attack.threat_model"))
        elif misplaced := misplaced_reason(path.relative_to(results_dir).as_posix(), record):
            unreadable.append((path, misplaced))
        else:
            tables[(path.parts[-5], path.parts[-4])].append((path.relative_to(results_dir).as_posix(), record))
    unreadable += [(path, f"misplaced: not where a record lies ({PLACE})") for path in stray_json(results_dir, seen)]
    return dict(sorted(tables.items())), sorted(unreadable)


PLACE = "DATASET/TABLE/ATTACK/DEFENSE/seedK.json"


def misplaced_reason(relpath: str, record: Record) -> str | None:
    """Why a record cannot be shown where it lies (None: it can): the folders it lies in must be
    the safe names its content gives (a copy in another cell's folder would be counted twice)."""
    place = (f"{record.table.dataset.get('name')}/{record.table.id}/{record.attack.folder}/"
             f"{record.defense.folder}/{seed_file(record.seed, ratio_of(record))}")
    if not all(safe_segment(part) for part in place.split("/")):
        return f"misplaced: its content names {place!r}, which is not a place uebench writes ({PLACE})"
    return None if relpath == place else f"misplaced: its content belongs at {place}; move it there or delete it"


def stray_json(results_dir: Path, seen: set[Path]) -> list[Path]:
    """JSON files under ``results_dir`` that are no record's (outside hidden folders such as .cache
    and the cells' own folders of figures): a record at another depth is said, not skipped."""
    stray = []
    for folder, dirs, files in os.walk(results_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".") and not (Path(folder) / f"{d}.json").is_file()]
        stray += [Path(folder) / f for f in files if f.endswith(".json") and Path(folder) / f not in seen]
    return stray


def md(text: object) -> str:
    """``text`` as markdown shows it literally: raw HTML escaped, ``|`` escaped so that a table
    keeps its columns."""
    return html.escape(str(text), quote=False).replace("|", "\\|")


def _order(names: set[str], first: str) -> list[str]:
    return ([first] if first in names else []) + sorted(names - {first})


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values, ddof=1):.1f}"


@dataclass
class TableView:
    """One table's records, gathered: what the markdown, the heatmap and the exports are drawn from."""
    table: TableInfo
    rows: list[str]                                   # attacks, the clean row first
    cols: list[str]                                   # defenses, the no-defense column first
    scores: dict[tuple[str, str], list[float]]        # (attack, defense) -> test accuracy per finished seed
    status: dict[tuple[str, str], set[str]]
    threat: dict[str, str]                            # attack -> its threat model, as printed
    seeds: set[int]
    versions: set[str]
    figures: list[str]
    failed: list[str]
    outdated: set[tuple[str, str]]                    # cells made by an earlier version of a method's code
    ratio: float = FULL                               # the poison ratio of every cell shown (the clean row: none)


def ratios_of(entries: list[Entry]) -> list[float]:
    """The poison ratios a table's records were made at, 1 first, then downwards; 1 is left out when
    only the clean row (which has no ratio) is there and other ratios are."""
    return sorted({ratio_of(r) for _, r in entries if r.attack.name != CLEAN} or {FULL}, reverse=True)


def at_ratio(entries: list[Entry], ratio: float) -> list[Entry]:
    """The entries of one ratio's table: its cells, and the clean row (the same at every ratio)."""
    return [(p, r) for p, r in entries if ratio_of(r) == ratio or r.attack.name == CLEAN]


def gather(entries: list[Entry], results_link: str = "../results", ratio: float = FULL) -> TableView:
    """One ratio's table (default 1: the whole protected split poisoned); cells of other ratios are left out."""
    entries = at_ratio(entries, ratio)
    records = [r for _, r in entries]
    scores: dict[tuple[str, str], list[float]] = defaultdict(list)
    status: dict[tuple[str, str], set[str]] = defaultdict(set)
    threat, figures, seeds, versions, outdated = {}, [], set(), set(), set()
    for path, r in sorted(entries, key=lambda e: (e[1].attack.folder, e[1].defense.folder, e[1].seed)):
        key = (r.attack.folder, r.defense.folder)
        status[key].add(r.status)
        if made_by_older_code(r):
            outdated.add(key)
        threat[r.attack.folder] = r.attack.threat_model.text
        seeds.add(r.seed)
        versions.add(f"{r.uebench_version or '?'} ({(r.git_commit or '?')[:12]})")
        if r.status == "ok":
            scores[key].append(get_protocol(r.table.protocol).value(r.metrics))
            figure = figure_of(r)
            if figure:
                fig_path = Path(path).with_suffix("") / figure
                figures.append(f"[{key[0]} / {key[1]} / seed {r.seed}]({results_link}/{fig_path.as_posix()})")
    failed = sorted({f"{r.attack.folder} / {r.defense.folder} / seed {r.seed}: {md(r.error)}"
                     for r in records if r.status == "failed"})
    names = {r.attack.folder for r in records}
    head = [a for a in (CLEAN, CLEAN_PART) if a in names]        # the references first
    rows = head + sorted(names - set(head))
    return TableView(records[0].table, rows, _order({r.defense.folder for r in records}, NONE), scores, status, threat,
                     seeds, versions, figures, failed, outdated, ratio)


def best_defenses(view: TableView) -> dict[str, str]:
    """The best-scoring defense of each ranked row (not the clean references; rows with two or more cells)."""
    best = {}
    for a in view.rows:
        means = {d: np.mean(view.scores[(a, d)]) for d in view.cols if view.scores[(a, d)]}
        if a not in (CLEAN, CLEAN_PART) and len(means) > 1:
            best[a] = max(means, key=means.get)
    return best


def made_by_older_code(record: Record) -> bool:
    """Whether the record's attack or defense was made by code other than the method's today (its
    fingerprint differs): ``uebench run`` redoes such a cell, and until then the table marks it.
    Records older than code fingerprints (schema < 3), the clean row and methods not registered
    here (a plugin not loaded) cannot be told and count as current."""
    if record.schema < 3:
        return False
    return any(made.code is not None and current_code(kind, made.name) not in (None, made.code)
               for kind, made in (("attack", record.attack), ("defense", record.defense)))


@functools.lru_cache(maxsize=None)
def current_code(kind: str, name: str) -> str | None:
    """The fingerprint of a registered method's code today; None for a name not registered here."""
    registry = ATTACKS if kind == "attack" else DEFENSES
    return method_fingerprint(registry.get(name)) if name in registry.names() else None


def figure_of(record: Record) -> str | None:
    """The file name of the cell's example images, when it saved some (a plain name in its folder)."""
    figure = (record.notes.get("defense") or {}).get("figure")
    return figure if safe_segment(figure) else None


def accuracy_frame(view: TableView) -> pd.DataFrame:
    """The mean of the table's metric (%; clean test accuracy, or a detector's AUROC) per attack
    (rows) and defense (columns); NaN where none finished. ``attrs["metric"]`` names the metric."""
    frame = pd.DataFrame([[100 * np.mean(view.scores[(a, d)]) if view.scores[(a, d)] else np.nan for d in view.cols]
                         for a in view.rows], index=pd.Index(view.rows, name="attack"),
                        columns=pd.Index(view.cols, name="defense"))
    frame.attrs["metric"] = get_protocol(view.table.protocol).metric
    return frame


def heatmap_name(view: TableView) -> str:
    ratio = "" if view.ratio == FULL else f"-ratio{ratio_text(view.ratio)}"
    return f"heatmap-{view.table.dataset['name']}-{view.table.id}{ratio}.png"


def ratio_figure_name(view: TableView) -> str:
    return f"ratio-{view.table.dataset['name']}-{view.table.id}.png"


def title_of(table: TableInfo) -> str:
    length = get_protocol(table.protocol).length(table)
    victim = f"victim {table.model}, poisons crafted on {table.surrogate}" if table.surrogate else table.model
    return f"{table.dataset['name']} · {table.protocol} · {victim} · {length}"


def protocol_text(table: TableInfo) -> str:
    """How the table's victims were trained, in one sentence (markdown; the protocol's own words)."""
    return get_protocol(table.protocol).describe(table)


def render_table(entries: list[Entry], results_link: str = "../results", ratio: float = FULL) -> str:
    """Markdown for one table's records at one poison ratio (default 1: the whole protected split)."""
    view = gather(entries, results_link, ratio)
    table, scores, status, threat, seeds = view.table, view.scores, view.status, view.threat, view.seeds
    row_names, col_names = view.rows, view.cols
    best_of = best_defenses(view)
    tied = within_spread(scores, col_names, best_of)
    body = []
    for a in row_names:
        means = {d: np.mean(scores[(a, d)]) for d in col_names if scores[(a, d)]}
        best = means[best_of[a]] if a in best_of else None
        line = {"attack": md(a), "budget": md(threat.get(a, ""))}
        for d in col_names:
            if scores[(a, d)]:
                text = _cell(scores[(a, d)])
                if len(scores[(a, d)]) < len(seeds):          # some seeds missing or failed
                    text += f" (n={len(scores[(a, d)])})"
                if (a, d) in view.outdated:
                    text += " †"
                if (a, d) in tied:
                    text += f" {MARK}"
                line[md(d)] = f"**{text}**" if best is not None and means[d] == best else text
            elif "not-applicable" in status[(a, d)]:
                line[md(d)] = "n/a"
            elif "failed" in status[(a, d)]:
                line[md(d)] = "failed"
            else:
                line[md(d)] = ""
        body.append(line)
    df = pd.DataFrame(body, columns=["attack", "budget", *map(md, col_names)])

    split, ds = table.split, table.dataset
    protocol = md(protocol_text(table))
    lines = [
        f"## {md(title_of(table))}{ratio_heading(ratio)} (`{table.id}`)",
        "",
        f"- **Protocol**: {protocol}",
        f"- **Data**: `{ds['name']}` ({ds['shape'][1]}×{ds['shape'][2]}×{ds['shape'][0]}); {split['n_protected']} "
        f"protected / {split['n_reference']} clean reference (defenses may use it) / {split['n_test']} test images.",
        *ratio_lines(view, entries),
        *leak_lines([r for _, r in at_ratio(entries, ratio)]),
        f"- **Metric**: {get_protocol(table.protocol).metric} (%), mean ± std over seeds {', '.join(map(str, sorted(seeds)))}; "
        f"(n=k): only k seeds finished; **bold**: best {get_protocol(table.protocol).column} per attack; n/a: the "
        f"{get_protocol(table.protocol).column} does not apply to this protocol; "
        f"budget: the attack's declared threat model, checked before training."
        + (" †: made by an earlier version of the method's code, to be recomputed (`uebench run` redoes it)."
           if view.outdated else "") + (f" {LEGEND}." if tied else ""),
        f"- **uebench**: {', '.join(sorted(view.versions))}.",
    ]
    lines += ["", df.to_markdown(index=False, disable_numparse=True), "",
              f"![{get_protocol(table.protocol).metric} of {table.id}{ratio_heading(ratio)}]({heatmap_name(view)})", ""]
    failed, figures = view.failed, view.figures
    if failed:
        lines += ["Failed cells:", ""] + [f"- {f}" for f in failed] + [""]
    if figures:
        lines += ["Examples (rows: clean / unlearnable / defended training images):", ""] + [f"- {f}" for f in sorted(figures)] + [""]
    return "\n".join(lines)


def leak_lines(records: list[Record]) -> list[str]:
    """The threat model of the defenses that saw leaked (clean, protected) pairs (Defense.leaked_pairs)."""
    ks: dict[str, set[int]] = defaultdict(set)
    for r in records:
        leak = r.notes.get("leaked_pairs") if r.status == "ok" else None
        if isinstance(leak, dict) and isinstance(leak.get("k"), int):
            ks[r.defense.folder].add(leak["k"])
    if not ks:
        return []
    granted = ", ".join(f"`{md(d)}` k = {'/'.join(map(str, sorted(v)))}" for d, v in sorted(ks.items()))
    return [f"- **Leaked pairs**: {granted}: (clean, protected) pairs of the protected split, a seeded draw per "
            f"cell, granted by the defense's threat model; no other defense sees a clean protected image."]


def shown_path(folder: Path) -> str:
    """``folder`` as a reader finds it: relative to the working directory when below it
    (``results`` for the project's own), else absolute (a scratch folder)."""
    folder = Path(folder).resolve()
    try:
        return folder.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return folder.as_posix()


def render(results_dir: Path, results_link: str = "../results") -> str:
    """The whole LEADERBOARD.md for ``results_dir``."""
    tables, unreadable = collect(Path(results_dir))
    parts = ["# uebench leaderboard", "",
             f"Generated by `uebench leaderboard` from the records under `{shown_path(results_dir)}/`; "
             "do not edit by hand.", ""]
    if not tables:
        parts += ["No results yet: run `uebench run`.", ""]
    for entries in tables.values():
        ratios = ratios_of(entries)
        parts += [render_table(entries, results_link, ratio) for ratio in ratios]
        if len(ratios) > 1:
            parts.append(render_ratios(entries))
    if unreadable:
        parts += ["Unreadable records (left out of the tables; re-run to redo them):", ""]
        parts += [f"- `{p.relative_to(results_dir).as_posix()}`: {md(why)}" for p, why in unreadable] + [""]
    return "\n".join(parts).rstrip() + "\n"


def heatmaps(results_dir: Path) -> dict[str, tuple[pd.DataFrame, str]]:
    """Per table: the heatmap's file name, and the accuracies and title it shows."""
    tables, _ = collect(Path(results_dir))
    out = {}
    for entries in tables.values():
        ratios = ratios_of(entries)
        for ratio in ratios:
            view = gather(entries, ratio=ratio)
            out[heatmap_name(view)] = (accuracy_frame(view), title_of(view.table) + ratio_heading(ratio))
        if len(ratios) > 1:
            out[ratio_figure_name(view)] = (ratio_frame(entries), title_of(view.table))
    return out


def write(results_dir: Path, out_path: Path) -> Path:
    """Render and write atomically: the markdown and, beside it, one heatmap PNG per table."""
    out_path = Path(out_path)
    link = os.path.relpath(Path(results_dir).resolve(), out_path.parent.resolve())
    frames = heatmaps(results_dir)
    for name in stale_heatmaps(results_dir, out_path, frames):      # unchanged pictures stay as they are
        (draw_ratio if name.startswith("ratio-") else draw)(*frames[name], out_path.parent / name)
    write_atomic(out_path, render(results_dir, results_link=Path(link).as_posix()))
    return out_path


def stale_heatmaps(results_dir: Path, out_path: Path, frames: dict | None = None) -> list[str]:
    """The heatmaps beside ``out_path`` that are missing or were drawn from other numbers
    (``frames``: :func:`heatmaps` of ``results_dir``, when the caller has them)."""
    frames = heatmaps(results_dir) if frames is None else frames
    return sorted(name for name, (frame, title) in frames.items()
                  if drawn_from(Path(out_path).parent / name) != data_key(frame, title))

