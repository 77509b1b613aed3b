"""`uebench leaderboard`: the markdown (and the web page) rendered from the records alone."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from uebench.commands import DEFAULT_LEADERBOARD, DEFAULT_RESULTS, leaderboard_path
from uebench.registry import UserError


def add_parser(sub) -> None:
    board = sub.add_parser("leaderboard", help="re-render the markdown leaderboard from the records")
    board.add_argument("--results-dir", default=DEFAULT_RESULTS, type=Path)
    board.add_argument("--out", type=Path, help=f"default: {DEFAULT_LEADERBOARD} for {DEFAULT_RESULTS}/, "
                       "else RESULTS_DIR/LEADERBOARD.md")
    board.add_argument("--check", action="store_true", help="exit 1 if OUT differs from the rendering")
    board.add_argument("--html", type=Path, metavar="DIR", help="also write a static web page (index.html, "
                       "heatmaps, the records it links to) into DIR")


def report_unreadable(results_dir: Path) -> int:
    """Say on stderr which records the leaderboard left out; returns how many."""
    from uebench import leaderboard
    _, unreadable = leaderboard.collect(Path(results_dir))
    for path, why in unreadable:
        print(f"uebench: {'misplaced' if why.startswith('misplaced') else 'corrupt'} record {path} ({why}); re-run "
              f"the command that made it to redo it, or delete the file", file=sys.stderr)
    return len(unreadable)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """Exit 1 when the markdown is out of date (--check) or any record is unreadable."""
    from uebench import leaderboard
    args.out = leaderboard_path(args.results_dir, args.out)
    if not Path(args.results_dir).is_dir():
        raise UserError(f"results directory {args.results_dir} does not exist; run 'uebench run' first "
                        f"or pass --results-dir")
    if args.check:
        import os
        link = os.path.relpath(Path(args.results_dir).resolve(), Path(args.out).parent.resolve())
        expected = leaderboard.render(args.results_dir, results_link=Path(link).as_posix())
        current = Path(args.out).read_text() if Path(args.out).exists() else ""
        if report_unreadable(args.results_dir):
            return 1
        if current != expected:
            print(f"uebench: {args.out} is out of date; run 'uebench leaderboard' and commit it", file=sys.stderr)
            return 1
        stale = leaderboard.stale_heatmaps(args.results_dir, args.out)
        if stale:
            print(f"uebench: heatmap(s) {', '.join(stale)} beside {args.out} are missing or out of date; "
                  f"run 'uebench leaderboard' and commit them", file=sys.stderr)
            return 1
        print(f"uebench: {args.out} matches {args.results_dir}", file=sys.stderr)
        return 0
    out = leaderboard.write(args.results_dir, args.out)
    print(f"uebench: leaderboard written to {out}", file=sys.stderr)
    if args.html:
        from uebench.plan import check_writable
        from uebench.site import write_site
        check_writable(args.html, "the web page's folder", "--html")
        print(f"uebench: web page written to {write_site(args.results_dir, args.html)}", file=sys.stderr)
    return 1 if report_unreadable(args.results_dir) else 0
