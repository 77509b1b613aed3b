"""`uebench export`: the tables as csv, json or latex, from the records alone."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from uebench.commands import DEFAULT_RESULTS
from uebench.registry import UserError


def add_parser(sub) -> None:
    exp = sub.add_parser("export", help="the tables as csv, json or latex, from the records alone")
    exp.add_argument("--format", default="csv", help="csv (default) | json | latex")
    exp.add_argument("--table", help="only this table id (e.g. supervised-smallcnn-15ep-a99dd5)")
    exp.add_argument("--results-dir", default=DEFAULT_RESULTS, type=Path)
    exp.add_argument("--out", type=Path, help="write here instead of standard output")


def cmd_export(args: argparse.Namespace) -> int:
    from uebench.export import export
    from uebench.storage import write_atomic
    if not Path(args.results_dir).is_dir():
        raise UserError(f"results directory {args.results_dir} does not exist; run 'uebench run' first "
                        f"or pass --results-dir")
    text = export(args.results_dir, args.format, args.table)
    if args.out:
        from uebench.plan import check_writable
        check_writable(Path(args.out).parent, "the export's folder", "--out")
        write_atomic(args.out, text)
        print(f"uebench: {args.format} written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
