"""``uebench leaderboard --html DIR``: the leaderboard as a static web page.

One page, no server and nothing fetched: the styles and the script are inline, the heatmaps
and the records it links to are copied beside it. One sortable table per (dataset, protocol)
with its protocol and heatmap; every cell links to its record (and to its example images,
where the cell saved some); one filter box narrows every table to the attacks whose names contain
what is typed (the clean row stays), or, when no attack's does, to those defenses. The address may carry the state
(``index.html#sort=none&order=desc&filter=em``), so a view can be linked, and so a headless
browser can be checked against it (tests/test_site.py).
"""
from __future__ import annotations

import html
import math
import os
import shutil
import tempfile
from pathlib import Path

from uebench.leaderboard import (accuracy_frame, at_ratio, best_defenses, collect, figure_of, gather, heatmap_name,
                                 protocol_text, ratio_figure_name, ratio_frame, ratio_heading, ratios_of, title_of)
from uebench.heatmap import draw, draw_ratio
from uebench.plan import CLEAN
from uebench.ratio import CLEAN_PART
from uebench.registry import UserError
from uebench.spread import LEGEND, MARK, within_spread
from uebench.storage import write_atomic

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: .5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: right; }
th { background: #f3f3f3; cursor: pointer; user-select: none; }
th[aria-sort=ascending]::after { content: " ▲"; } th[aria-sort=descending]::after { content: " ▼"; }
td.name, th.name { text-align: left; } td a { color: inherit; text-decoration: none; }
tr.clean td { border-bottom: 2px solid #666; } .best { font-weight: bold; } .missing { color: #aaa; }
img.heatmap { max-width: 100%; } p.protocol { color: #555; max-width: 110ch; }
"""

SCRIPT = """
const cellValue = td => td.dataset.value === undefined ? -Infinity : parseFloat(td.dataset.value);
function sortBy(th, order) {
  const table = th.closest('table'), body = table.tBodies[0], col = th.cellIndex;
  order = order || (th.getAttribute('aria-sort') === 'descending' ? 'ascending' : 'descending');
  table.querySelectorAll('th').forEach(h => h.removeAttribute('aria-sort'));
  th.setAttribute('aria-sort', order);
  const rows = Array.from(body.rows), clean = rows.filter(r => r.classList.contains('clean'));
  const others = rows.filter(r => !r.classList.contains('clean')).sort((a, b) => {
    const x = a.cells[col], y = b.cells[col];
    const d = col === 0 ? x.textContent.localeCompare(y.textContent) : cellValue(x) - cellValue(y);
    return order === 'ascending' ? d : -d;
  });
  clean.concat(others).forEach(r => body.appendChild(r));      // the clean row stays on top
}
function filterBy(text) {          // attacks whose name holds the text, else defenses whose name does
  text = text.trim().toLowerCase();
  document.querySelectorAll('table.board').forEach(table => {
    const rows = Array.from(table.tBodies[0].rows), header = Array.from(table.tHead.rows[0].cells);
    const rowHit = r => r.dataset.name.includes(text), colHit = h => h.dataset.name.includes(text);
    const byRow = rows.some(r => !r.classList.contains('clean') && rowHit(r));
    const byCol = !byRow && header.some((h, c) => c >= 2 && colHit(h));
    rows.forEach(r => { r.hidden = !!text && !r.classList.contains('clean') && !byCol && !rowHit(r); });
    header.forEach((h, c) => {      // the name, budget and no-defense columns always stay
      const hide = !!text && byCol && c >= 2 && h.dataset.name !== 'none' && !colHit(h);
      h.hidden = hide;
      rows.forEach(r => { r.cells[c].hidden = hide; });
    });
  });
}
document.querySelectorAll('table.board th').forEach(th => th.addEventListener('click', () => sortBy(th)));
const box = document.getElementById('filter');
box.addEventListener('input', () => filterBy(box.value));
const state = new URLSearchParams(location.hash.slice(1));   // e.g. #sort=none&order=desc&filter=em
if (state.get('filter')) { box.value = state.get('filter'); box.dispatchEvent(new Event('input')); }
if (state.get('sort')) document.querySelectorAll(`table.board th[data-name="${state.get('sort')}"]`).forEach(th => {
  th.click();                                                       // as a reader would: descending first
  if (state.get('order') === 'asc') th.click();
});
"""


def write_site(results_dir: Path, out_dir: Path) -> Path:
    """Write ``out_dir/index.html`` with its heatmaps and the records it links to; returns the page.

    The page is built in a hidden folder inside ``out_dir`` and moved in file by file, the page
    last: a record removed while it is built (by a run changing the results) ends the command in
    one line, with ``out_dir`` as it was."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=out_dir))
    try:
        try:
            build_site(Path(results_dir), staging)
        except FileNotFoundError as err:
            raise UserError(f"{err.filename} was removed while the web page was built (is a run changing "
                            f"the results?); run the command again") from None
        for path in sorted((p for p in staging.rglob("*") if p.is_file()), key=lambda p: p.name == "index.html"):
            target = out_dir / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir / "index.html"


def build_site(results_dir: Path, out_dir: Path) -> None:
    """The page, its heatmaps and the records it links to, written into ``out_dir``."""
    tables, unreadable = collect(results_dir)
    sections = []
    for entries in tables.values():
        for path, _ in entries:                      # the records (and figures) the cells link to
            copy(results_dir / path, out_dir / "results" / path)
            figure = results_dir / Path(path).with_suffix("") / "examples.png"
            if figure.exists():
                copy(figure, out_dir / "results" / Path(path).with_suffix("") / "examples.png")
        ratios = ratios_of(entries)
        for ratio in ratios:                         # a table per poison ratio (1: the whole protected split)
            view = gather(entries, ratio=ratio)
            draw(accuracy_frame(view), title_of(view.table) + ratio_heading(ratio), out_dir / heatmap_name(view))
            sections.append(section(view, at_ratio(entries, ratio), out_dir))
        if len(ratios) > 1:
            draw_ratio(ratio_frame(entries), title_of(view.table), out_dir / ratio_figure_name(view))
            sections.append(f'<h3>{html.escape(title_of(view.table))}: accuracy against the poison ratio, no defense '
                            f'(dashed: trained on the clean part alone)</h3>\n<img class="heatmap" src='
                            f'"{html.escape(ratio_figure_name(view))}" alt="accuracy against the poison ratio">\n')
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>uebench leaderboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body>
<h1>uebench leaderboard</h1>
<p>Clean test accuracy (%) of a victim trained on each attack's unlearnable examples under each defense (detection
tables: each detector's AUROC against the poison mask), mean over seeds; generated by <code>uebench leaderboard --html</code> from the records under <code>{html.escape(results_dir.name)}/</code>.
Click a column to sort; a cell links to its record.</p>
<p><label>Filter attacks and defenses: <input id="filter" type="search" placeholder="e.g. em, jpeg"></label></p>
{''.join(sections) or '<p>No results yet: run <code>uebench run</code>.</p>'}
{f'<p>{len(unreadable)} unreadable record(s) left out; see <code>uebench leaderboard</code>.</p>' if unreadable else ''}
<script>{SCRIPT}</script>
</body></html>
"""
    write_atomic(out_dir / "index.html", page)


def section(view, entries, page_dir: Path) -> str:
    """One table: its title, protocol, heatmap and the sortable grid."""
    frame = accuracy_frame(view)
    first_seed = sorted(entries, key=lambda e: -e[1].seed)        # the lowest seed's record is linked
    links = {(r.attack.folder, r.defense.folder): f"results/{path}" for path, r in first_seed}
    figures = {(r.attack.folder, r.defense.folder): f"results/{Path(path).with_suffix('')}/{figure}"
               for path, r in first_seed if (figure := figure_of(r))}
    head = "".join(f'<th data-name="{html.escape(d)}">{html.escape(d)}</th>' for d in view.cols)
    best_of = best_defenses(view)
    tied = within_spread(view.scores, view.cols, best_of)
    rows = []
    for attack in view.rows:
        best = frame.loc[attack, best_of[attack]] if attack in best_of else None
        cells = []
        for defense in view.cols:
            value = frame.loc[attack, defense]
            if math.isnan(value):                       # as the markdown says it: n/a, failed, or not run
                state = view.status[(attack, defense)]
                text = "n/a" if "not-applicable" in state else "failed" if "failed" in state else "·"
                cells.append(f'<td class="missing">{text}</td>')
                continue
            link = links[(attack, defense)]
            mark = ' class="best"' if best is not None and value == best else ""
            figure = figures.get((attack, defense))
            images = (f' <a href="{html.escape(figure)}" title="example images">▣</a>'
                      if figure and (page_dir / figure).exists() else "")
            outdated = (' <span title="made by an earlier version of the method\'s code, to be recomputed">†</span>'
                        if (attack, defense) in view.outdated else "")
            spread = (f' <span title="within the seeds\' spread of the row\'s best">{MARK}</span>'
                      if (attack, defense) in tied else "")
            cells.append(f'<td data-value="{value:.2f}"{mark}><a href="{html.escape(link)}" title="the record">'
                         f'{value:.1f}</a>{outdated}{spread}{images}</td>')
        kind = ' class="clean"' if attack in (CLEAN, CLEAN_PART) else ""     # the references stay on top
        rows.append(f'<tr{kind} data-name="{html.escape(attack)}"><td class="name">{html.escape(attack)}</td>'
                    f'<td class="name">{html.escape(view.threat.get(attack, ""))}</td>{"".join(cells)}</tr>')
    return f"""
<h2>{html.escape(title_of(view.table) + ratio_heading(view.ratio))} <small><code>{html.escape(view.table.id)}</code></small></h2>
<p class="protocol">{html.escape(protocol_text(view.table).replace('`', ''))}</p>
<p class="protocol">Metric: {html.escape(frame.attrs["metric"])} (%), mean over seeds {html.escape(', '.join(map(str, sorted(view.seeds))))}.{' †: made by an earlier version of the method&#x27;s code, to be recomputed.' if view.outdated else ''}{' ' + html.escape(LEGEND) + '.' if tied else ''}</p>
<img class="heatmap" src="{html.escape(heatmap_name(view))}" alt="heatmap of {html.escape(view.table.id)}">
<table class="board"><thead><tr><th class="name" data-name="attack">attack</th>
<th class="name" data-name="budget">budget</th>{head}</tr></thead>
<tbody>{''.join(rows)}</tbody></table>
"""


def copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
