"""Command line: ``uebench run``, ``uebench list``, ``uebench leaderboard``.

Exit codes: 0 all cells finished, 1 some cell failed (see its record) or, for ``leaderboard``,
some record is unreadable or the markdown out of date (``--check``), 2 bad input (one line on
stderr saying what to do; nothing written).
"""
from __future__ import annotations

import argparse
import sys

from uebench.commands import board, export, listing, migrate, run
from uebench.registry import UserError

COMMANDS = {"run": run.cmd_run, "plan": run.cmd_run, "list": listing.cmd_list, "leaderboard": board.cmd_leaderboard,
            "export": export.cmd_export, "migrate": migrate.cmd_migrate}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):   # bad flags: one line, exit code 2
        raise UserError(f"{message} (see '{self.prog} --help')")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but an unknown flag points to the help of the command it was given to."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            command = f"{self.prog} {parsed.command}" if getattr(parsed, "command", None) else self.prog
            raise UserError(f"unrecognized arguments: {' '.join(extra)} (see '{command} --help')")
        return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="uebench", description="Benchmark unlearnable examples against countermeasures.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    for command in (run, listing, board, export, migrate):
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help()
            return 2
        if args.command == "plan":
            args.dry_run = True
        return COMMANDS[args.command](args)
    except UserError as err:
        print(f"uebench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("uebench: interrupted; finished cells are kept, re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
