"""The command line: one-line errors with exit code 2 and nothing written; list; leaderboard."""
from __future__ import annotations

import re

import pytest

from uebench.cli import main
from uebench.commands.run import parse_params, parse_value


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, message", [
    (["run", "--attacks", "classwise-nosie"], "did you mean classwise-noise"),
    (["run", "--defenses", "nope"], "unknown defense 'nope'"),
    (["run", "--preset", "quick"], "unknown preset 'quick'"),
    (["run", "--epochs", "zero"], "invalid int value"),
    (["run", "--epochs", "0"], "--epochs must be >= 1"),
    (["run", "--jobs", "0"], "--jobs must be >= 1"),
    (["run", "--seeds", "a,b"], "--seeds expects numbers"),
    (["run", "--dataset", "npz:/no/such/file.npz"], "npz file /no/such/file.npz not found"),
    (["run", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["run", "-A", "rounds=5"], "-A expects METHOD.NAME=VALUE"),
    (["run", "--attacks", "random-noise", "-A", "random-noise.nonexistent=3"],
     "bad hyperparameters for attack random-noise"),
    (["run", "--attacks", "random-noise", "-A", "classwise-noise.grid=2"], "which is not selected"),
    (["run", "--attacks", "classwise-noise", "-A", "classwise-noise.grid=0"], "grid must be >= 1"),
    (["run", "--attacks", "em", "-A", "em.eps=abc", "--dry-run"], "eps must be a number"),
    (["run", "--attacks", "em", "-A", "em.eps=-1", "--dry-run"], "attack em (eps=-1): threat model budget"),
    (["run", "--attacks", "em", "-A", "em.eps=nan", "--dry-run"], "eps must be a finite number"),
    (["run", "--attacks", "em", "-A", "em.max_rounds=2.5", "--dry-run"], "max_rounds must be a whole number"),
    (["run", "--attacks", "em", "-A", "em.max_rounds=0", "--dry-run"], "attack em (max_rounds=0): max_rounds"),
    (["run", "--defenses", "at", "-D", "at.norm=l7", "--dry-run"], "defense at (norm='l7'): norm must be"),
    (["run", "--device", "cuda:7"], "--device"),
    (["run", "--bogus-flag"], "unrecognized arguments"),
    (["leaderboard", "--results-dir", "/no/such/results"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, message):
    code, out, err = _run(capsys, *argv, *(["--results-dir", str(tmp_path / "r")] if argv[0] == "run" else []))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("uebench: error:")
    assert message in lines[0]
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*.json"))


def test_corrupt_npz_and_unwritable_results_dir(capsys, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an npz at all")
    code, _, err = _run(capsys, "run", "--dataset", f"npz:{bad}", "--results-dir", str(tmp_path / "r"))
    assert code == 2 and "cannot read" in err and len(err.strip().splitlines()) == 1

    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    code, _, err = _run(capsys, "run", "--preset", "smoke", "--results-dir", str(blocker / "results"))
    assert code == 2 and "cannot write to results directory" in err and "--results-dir" in err


def test_a_bad_dataset_is_refused_before_the_results_folder_exists(capsys, tmp_path):
    import numpy as np
    x = np.zeros((40, 8, 8, 3), dtype=np.uint8)
    bad = {"single-class": dict(x_train=x, y_train=np.zeros(40), x_test=x[:5], y_test=np.zeros(5)),
           "huge-label": dict(x_train=x, y_train=np.r_[np.arange(39) % 2, 10**9], x_test=x[:2], y_test=[0, 1]),
           "channels-first": dict(x_train=x.transpose(0, 3, 1, 2).copy(), y_train=np.arange(40) % 2,
                                  x_test=x[:2].transpose(0, 3, 1, 2).copy(), y_test=[0, 1])}
    for name, arrays in bad.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        code, _, err = _run(capsys, "run", "--preset", "smoke", "--dataset", f"npz:{tmp_path / name}.npz",
                            "--results-dir", str(tmp_path / "r"))
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "r").exists(), name


def test_small_messages_say_the_right_thing(capsys, tmp_path):
    code, _, err = _run(capsys, "--bogus")
    assert code == 2 and "(see 'uebench --help')" in err
    code, _, err = _run(capsys, "run", "--bogus")
    assert code == 2 and "(see 'uebench run --help')" in err
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    code, _, err = _run(capsys, "run", "--preset", "smoke", "--attacks", "random-noise", "--defenses", "none",
                        "--results-dir", str(tmp_path / "r"), "--leaderboard", str(blocker / "LEADERBOARD.md"))
    assert code == 2 and f"cannot write to the leaderboard's folder {blocker}" in err and "--leaderboard" in err
    assert "results directory" not in err


def test_list_shows_methods_with_paper_threat_model_and_target(capsys):
    code, out, _ = _run(capsys, "list")
    assert code == 0
    line = next(l for l in out.splitlines() if l.startswith("classwise-noise"))
    assert "L∞ 8/255" in line and "supervised" in line and "Huang" in line
    released = {l.split()[0]: l for l in out.splitlines() if l.startswith(("random-noise ", "conv-blur ", "em ", "lsp ", "ucl "))}
    assert "  round  " in released["random-noise"] and "in generate" in released["conv-blur"]
    assert "  truncate  " in released["em"] and "  truncate  " in released["lsp"]
    assert "float (until recomputed)" in released["ucl"]
    code, out, _ = _run(capsys, "list", "defenses")
    assert "attacks (" not in out and any(l.startswith("none ") for l in out.splitlines())


def test_list_reports_a_broken_plugin_file(capsys, tmp_path):
    bad = tmp_path / "broken_plugin.py"
    bad.write_text("raise RuntimeError('cannot start')\n")
    code, out, _ = _run(capsys, "list", "--plugin", str(bad))
    assert code == 0
    assert "BROKEN plugin" in out and "cannot start" in out and "random-noise" in out


def test_parse_values():
    assert parse_value("8/255") == pytest.approx(8 / 255)
    assert parse_value("10") == 10 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("1,2,2,2") == (1, 2, 2, 2) and parse_value("fnn") == "fnn"
    assert parse_params(["em.rounds=5", "em.step-size=0.8/255"], "-A") == {
        "em": {"rounds": 5, "step_size": pytest.approx(0.8 / 255)}}


def test_dry_run_lists_the_plan_without_writing(capsys, tmp_path):
    code, out, err = _run(capsys, "run", "--preset", "smoke", "--attacks", "random-noise,classwise-noise",
                          "--defenses", "none", "--seeds", "0-1", "--dry-run", "--results-dir", str(tmp_path / "r"))
    assert code == 0
    assert len(out.strip().splitlines()) == 3 * 1 * 2
    assert "6 cells, 6 to run" in err
    assert not (tmp_path / "r").exists()          # planning writes nothing, not even the folder


def test_run_then_leaderboard_check(capsys, tmp_path):
    results, board = tmp_path / "results", tmp_path / "board" / "LEADERBOARD.md"
    code, _, err = _run(capsys, "run", "--preset", "smoke", "--epochs", "1", "--attacks", "classwise-noise",
                        "--defenses", "none", "--results-dir", str(results), "--leaderboard", str(board), "--quiet")
    assert code == 0, err
    text = board.read_text()
    assert "| classwise-noise | L∞ 8/255" in text and "| clean " in text
    assert _run(capsys, "leaderboard", "--results-dir", str(results), "--out", str(board), "--check")[0] == 0
    board.write_text(text.replace("classwise-noise", "edited-by-hand"))
    assert _run(capsys, "leaderboard", "--results-dir", str(results), "--out", str(board), "--check")[0] == 1
    assert _run(capsys, "leaderboard", "--results-dir", str(results), "--out", str(board))[0] == 0
    assert board.read_text() == text


def test_a_scratch_results_folder_keeps_its_own_leaderboard(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                       # a project checkout with a committed leaderboard
    committed = tmp_path / "leaderboard" / "LEADERBOARD.md"
    committed.parent.mkdir()
    committed.write_text("committed table\n")
    scratch = tmp_path / "scratch"
    code, _, err = _run(capsys, "run", "--preset", "smoke", "--epochs", "1", "--attacks", "random-noise",
                        "--defenses", "none", "--results-dir", str(scratch), "--quiet")
    assert code == 0, err
    assert committed.read_text() == "committed table\n"
    assert "| random-noise" in (scratch / "LEADERBOARD.md").read_text()
    assert _run(capsys, "leaderboard", "--results-dir", str(scratch), "--check")[0] == 0


def test_output_that_is_not_a_terminal_gets_one_line_per_finished_cell(tmp_path, capsys):
    """CI logs and cluster jobs: no carriage-return bars, one line per cell with what is left."""
    from uebench.cli import main
    argv = ["run", "--preset", "smoke", "--epochs", "1", "--attacks", "random-noise,classwise-noise",
            "--defenses", "none,iss-gray", "--results-dir", str(tmp_path / "results"), "--device", "cpu"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    cells = [line for line in err.splitlines() if line.startswith("uebench: [") and " × " in line]
    assert len(cells) == 6                                   # (clean + 2 attacks) × (none + iss-gray)
    assert cells[-1].startswith("uebench: [6/6] ") and "(0 cells left)" in cells[-1]
    assert all(re.search(r" seed 0: clean test accuracy \d+\.\d % in \d+ s \(\d cells left", line) for line in cells)
    assert "about" in cells[0]                               # an estimate while cells are left
    poisons = [line for line in err.splitlines() if line.startswith("uebench: [") and "poison set" in line]
    assert len(poisons) == 2 and all(line.endswith("left)") or "left, about" in line for line in poisons)


def test_run_alone_is_a_short_first_grid_that_ends_with_its_table_and_what_to_try_next(tmp_path, capsys):
    from uebench.commands.run import FIRST_GRID
    assert main(["run", "--preset", "smoke", "--epochs", "1", "--results-dir", str(tmp_path / "r")]) == 0
    out, err = capsys.readouterr()
    assert "the first grid" in err
    rows = {line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and "budget" not in line}
    assert rows == {"clean", *FIRST_GRID["attacks"].split(",")}
    header = next(line for line in out.splitlines() if line.startswith("| attack"))
    assert [c.strip() for c in header.split("|")[3:-1]] == ["none", "cutout", "iss-jpeg"]
    assert "Next:" in out and "--attacks all --defenses all" in out
    # naming a part of the grid runs that grid (the other part defaults to all), and prints no table
    assert main(["run", "--preset", "smoke", "--epochs", "1", "--attacks", "random-noise", "--defenses", "none",
                 "--results-dir", str(tmp_path / "r2")]) == 0
    assert "Next:" not in capsys.readouterr().out
