"""The commands, one module each: ``add_parser(sub)`` declares its flags, ``cmd_<name>(args)`` runs it.

    run.py        uebench run / uebench plan      board.py     uebench leaderboard
    listing.py    uebench list                    export.py    uebench export
    migrate.py    uebench migrate

``uebench.cli`` builds the parser from them and maps errors to exit codes.
"""
from __future__ import annotations

from pathlib import Path

DEFAULT_RESULTS = Path("results")
DEFAULT_LEADERBOARD = Path("leaderboard/LEADERBOARD.md")


def leaderboard_path(results_dir: Path, given: Path | None) -> Path:
    """Where the markdown goes: as given; else the project's leaderboard for the project's
    results, and RESULTS_DIR/LEADERBOARD.md for any other results folder (so a scratch or
    cluster run never overwrites the committed table)."""
    if given is not None:
        return given
    return DEFAULT_LEADERBOARD if Path(results_dir) == DEFAULT_RESULTS else Path(results_dir) / "LEADERBOARD.md"
