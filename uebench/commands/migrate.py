"""`uebench migrate`: restamp older records whose code is unchanged."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from uebench.commands import DEFAULT_RESULTS
from uebench.registry import UserError


def add_parser(sub) -> None:
    mig = sub.add_parser("migrate", help="restamp records of an older schema whose code is unchanged")
    mig.add_argument("--results-dir", default=DEFAULT_RESULTS, type=Path)
    mig.add_argument("--dry-run", action="store_true", help="say what would change and change nothing")
    mig.add_argument("--as-of", metavar="REV", help="compare with the method files at this git revision (their "
                     "code unchanged since, only docstrings, comments or import paths)")


def cmd_migrate(args: argparse.Namespace) -> int:
    from uebench.migrate import migrate
    if not Path(args.results_dir).is_dir():
        raise UserError(f"results directory {args.results_dir} does not exist; pass --results-dir")
    outcome = migrate(args.results_dir, dry_run=args.dry_run, as_of=args.as_of)
    for path in outcome["stale"]:
        print(f"uebench: {path}: made by other code than its method has now; left as it is (a run redoes it)",
              file=sys.stderr)
    print(f"uebench: {len(outcome['migrated'])} record(s) {'to restamp' if args.dry_run else 'restamped'}, "
          f"{len(outcome['stale'])} stale, {len(outcome['current'])} current, "
          f"{len(outcome['unreadable'])} unreadable", file=sys.stderr)
    return 1 if outcome["unreadable"] else 0
