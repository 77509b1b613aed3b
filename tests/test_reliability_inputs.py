"""Issue 29, "Reliability, round 3": hostile names and values, refused before any work (items 1, 2,
6, 7) and planning before the data is on disk (item 12). Each test fails on the code before."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from registry_sandbox import sandbox_registries
from uebench.cli import main

SMOKE = ["--preset", "smoke", "--epochs", "1", "--device", "cpu", "--quiet"]


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _refused(capsys, tmp_path, *argv) -> str:
    """Run ``uebench run ARGV`` in a scratch folder: exit 2, one line, nothing written anywhere."""
    before = {p for p in tmp_path.rglob("*")}
    code, _, err = _run(capsys, "run", *argv, "--results-dir", str(tmp_path / "r"))
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("uebench: error:"), err
    assert {p for p in tmp_path.rglob("*")} == before, "something was written"
    return lines[0]


# -- item 1: a method's name is a safe identifier, checked at registration -------------------------

PLUGIN = '''
from dataclasses import dataclass
from uebench import Attack, Defense, ThreatModel, register_attack, register_defense

@register_{kind}
@dataclass
class Hostile({base}):
    name = {name!r}
    paper = "toy"

    def threat_model(self):
        return ThreatModel("linf", 8 / 255)

    def generate(self, x, y, ctx):
        return x
'''


@pytest.mark.parametrize("kind, name", [
    ("attack", "../../escape"), ("attack", "/tmp/uebench-absolute"), ("defense", "../../x"), ("attack", "a/b"),
    ("attack", "x|y"), ("defense", "<b>bold</b>"), ("attack", "Upper"), ("attack", ".hidden"), ("attack", "a..b"),
    ("attack", "em@1a2b3c"), ("attack", "clean"), ("attack", "x" * 65), ("defense", "a b"),
])
def test_a_method_name_that_is_not_a_safe_identifier_is_refused_at_registration(capsys, tmp_path, monkeypatch,
                                                                                 kind, name):
    sandbox_registries(monkeypatch)
    work = tmp_path / "work" / "deep"               # ../../escape from r/<dataset>/<table> lands in here
    work.mkdir(parents=True)
    plugin = work / "hostile_plugin.py"
    plugin.write_text(PLUGIN.format(kind=kind, base=kind.title(), name=name))
    monkeypatch.chdir(work)
    flag = "--attacks" if kind == "attack" else "--defenses"
    line = _refused(capsys, tmp_path, "--plugin", str(plugin), *SMOKE, flag, name)
    assert "hostile_plugin.py" in line and "is not allowed" in line
    assert not Path("/tmp/uebench-absolute").exists()


def test_an_entry_point_with_an_unsafe_name_is_broken_and_registers_nothing():
    from uebench.api import Attack
    from uebench.registry import PluginError, Registry
    registry = Registry("attack", "uebench.no-such-group", Attack)
    with pytest.raises(PluginError, match=r"toyplug:Escape: attack name '\.\./escape' is not allowed"):
        registry.register("../escape", "toyplug:Escape")
    assert registry.names() == []


def test_every_builtin_name_and_variant_folder_is_a_safe_name():
    from uebench.registry import ATTACKS, DEFENSES, METHOD_NAME, SEGMENT, safe_segment
    assert all(safe_segment(n, METHOD_NAME) for n in ATTACKS.names() + DEFENSES.names())
    assert safe_segment("em@1a2b3c") and safe_segment("npz-cifar10_subset")
    assert not safe_segment("em@1a2b3c", METHOD_NAME)
    assert SEGMENT.fullmatch("supervised-smallcnn-15ep-a99dd5")


@pytest.mark.parametrize("stem", ["my data", "a|b", "<i>x", "a..b"])
def test_a_dataset_whose_name_would_be_an_unsafe_folder_is_refused(capsys, tmp_path, stem):
    (tmp_path / "data").mkdir()
    x = np.zeros((40, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "data" / f"{stem}.npz", x_train=x, y_train=np.arange(40) % 2, x_test=x[:4],
             y_test=np.arange(4) % 2)
    line = _refused(capsys, tmp_path, *SMOKE, "--attacks", "random-noise", "--defenses", "none",
                    "--n-reference", "10", "--n-protected", "20", "--dataset", f"npz:{tmp_path / 'data' / stem}.npz")
    assert "rename the file" in line


@pytest.mark.parametrize("argv, message", [
    (["--model", "../../m"], "--model: unknown model '../../m'"),       # the model is part of the table's folder name
    (["--test-subset", "-1"], "--test-subset must be >= 1"),    # digits-test-1 and an odd 50-image test set
])
def test_other_path_components_from_input_are_checked(capsys, tmp_path, argv, message):
    assert message in _refused(capsys, tmp_path, *SMOKE, "--attacks", "random-noise", "--defenses", "none", *argv)


# -- item 2: the leaderboard reports what it cannot place, and escapes what it shows ----------------

@pytest.fixture(scope="module")
def one_cell(tmp_path_factory):
    """The records of one finished smoke cell (clean and random noise under no defense)."""
    results = tmp_path_factory.mktemp("one") / "results"
    assert main(["run", *SMOKE, "--attacks", "random-noise", "--defenses", "none", "--results-dir", str(results),
                 "--no-leaderboard"]) == 0
    return results


def test_the_leaderboard_reports_every_record_it_cannot_place(capsys, tmp_path, one_cell):
    from uebench import leaderboard
    results = tmp_path / "results"
    shutil.copytree(one_cell, results)
    record = next(results.rglob("random-noise/none/seed0.json"))
    table = record.parents[2]
    placed = {
        "too shallow": results / "stray" / "seed0.json",
        "too deep": table / "random-noise" / "none" / "extra" / "seed0.json",
        "another defense's folder": table / "random-noise" / "cutout" / "seed0.json",   # counted twice before
        "another seed's name": table / "random-noise" / "none" / "seed1.json",
    }
    for path in placed.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(record, path)
    code, _, err = _run(capsys, "leaderboard", "--results-dir", str(results))
    assert code == 1
    markdown = (results / "LEADERBOARD.md").read_text()
    for what, path in placed.items():
        assert f"misplaced record {path}" in err, what
        assert path.relative_to(results).as_posix() in markdown.split("Unreadable records")[1], what
    assert "| cutout" not in markdown and "(n=1)" not in markdown     # the copies are in no table
    assert len(leaderboard.collect(results)[0]) == 1


def test_markdown_escapes_pipes_and_html_in_what_it_shows(one_cell):
    from uebench import leaderboard
    (dataset_table, entries), = leaderboard.collect(one_cell)[0].items()
    for _, record in entries:
        if record.attack.name != "clean":
            record.attack.folder, record.attack.threat_model.text = "x|y", "<img src=x onerror=alert(1)>"
            record.defense.folder = "<b>d</b>"
    failed = entries[0][1]
    failed.status, failed.error = "failed", "ValueError: <script>alert(1)</script> a|b"
    text = leaderboard.render_table(entries)
    header = next(l for l in text.splitlines() if l.startswith("| attack"))
    row = next(l for l in text.splitlines() if l.startswith("| x"))
    cells = lambda line: [c for c in line.replace("\\|", "").split("|")][1:-1]     # noqa: E731
    assert len(cells(row)) == len(cells(header)) == 4     # attack, budget, none, <b>d</b>
    assert "<img" not in text and "<b>" not in text and "<script>" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in row and "&lt;script&gt;" in text and "a\\|b" in text


# -- item 6: empty and untrained splits, subsets, seeds ----------------------------------------------

def _npz(path: Path, y_train, n_test: int = 4) -> str:
    x = np.random.default_rng(0).integers(0, 256, (len(y_train), 8, 8, 3), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=np.asarray(y_train), x_test=x[:n_test], y_test=np.asarray(y_train)[:n_test])
    return f"npz:{path}"


def test_an_empty_test_set_is_refused(capsys, tmp_path):
    data = _npz(tmp_path / "notest.npz", np.arange(40) % 2, n_test=0)
    line = _refused(capsys, tmp_path, *SMOKE, "--attacks", "random-noise", "--defenses", "none", "--dataset", data,
                    "--n-reference", "10", "--n-protected", "20")
    assert "the test split is empty" in line


def test_a_class_whose_only_images_go_to_the_reference_split_is_refused(capsys, tmp_path):
    from uebench.data import make_splits
    y = np.r_[np.arange(38) % 2, 2, 2]                    # class 2: two images of 40
    splits = make_splits(y, 30, 10, 0)
    assert 2 in set(y) and 2 not in set(y[splits.protected])   # premise: the victim would never see class 2
    data = _npz(tmp_path / "rare.npz", y)
    line = _refused(capsys, tmp_path, *SMOKE, "--attacks", "random-noise", "--defenses", "none", "--dataset", data,
                    "--n-reference", "30", "--n-protected", "10")
    assert "no protected image of class 2" in line and "--n-reference" in line


@pytest.mark.parametrize("argv, message", [
    (["--test-subset", "0"], "--test-subset must be >= 1 (leave it out for the whole split)"),
    (["--train-subset", "0"], "--train-subset must be >= 1"),
    (["--seeds", "3-1"], "--seeds 3-1: each seed lies in 0..2147483647, and a range runs upwards"),
    (["--seeds", ","], "--seeds expects numbers like 0,1,2 or 0-4"),
    (["--seeds", ""], "--seeds expects numbers like 0,1,2 or 0-4"),
    (["--seeds", "0,0"], "seed 0 given twice"),
    (["--seeds", "0-2,1"], "seed 1 given twice"),
])
def test_subsets_and_seeds_that_mean_nothing_or_twice_are_refused(capsys, tmp_path, argv, message):
    assert message in _refused(capsys, tmp_path, *SMOKE, "--attacks", "random-noise", "--defenses", "none", *argv)


def test_seed_lists_and_ranges_parse_as_documented():
    from uebench.commands.run import parse_seeds
    assert parse_seeds("0-2") == [0, 1, 2] and parse_seeds("0-2,7") == [0, 1, 2, 7] and parse_seeds(" 4 ") == [4]


# -- item 7: every option and hyperparameter checked before any work ------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite number >= 0, got nan"),
    (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0, got -1"),
    (["--model", "resnet99"], "--model: unknown model 'resnet99': did you mean resnet50, resnet18"),
    (["--seeds", str(2**63)], "each seed lies in 0..2147483647"),
    (["--seeds", "0-5000", "--dry-run"], "over at most 1,000 seeds"),    # not 20,004 cells
    (["-A", "random-noise.epz=1"], "no hyperparameter 'epz'; did you mean eps?"),
    (["-D", "cutout.lenght=4", "--defenses", "cutout"], "no hyperparameter 'lenght'; did you mean length?"),
])
def test_options_and_hyperparameters_are_checked_before_any_work(capsys, tmp_path, argv, message):
    line = _refused(capsys, tmp_path, *SMOKE, "--attacks", "random-noise", "--defenses", "none", *argv)
    assert message in line


@pytest.mark.parametrize("attack, param", [("em", "surrogate"), ("tap", "surrogate"), ("ucl", "arch")])
def test_a_hyperparameter_naming_an_unknown_network_is_refused_before_any_work(capsys, tmp_path, attack, param):
    line = _refused(capsys, tmp_path, *SMOKE, "--attacks", attack, "--defenses", "none", "-A", f"{attack}.{param}=resnet99")
    assert f"{param}='resnet99' is not a model: " in line and "resnet18" in line


def test_ntga_keeps_its_own_kernel_names_for_surrogate(capsys, tmp_path):
    code, _, err = _run(capsys, "plan", *SMOKE, "--attacks", "ntga", "--defenses", "none", "-A", "ntga.surrogate=cnn",
                        "--results-dir", str(tmp_path / "r"))
    assert code == 0, err


# -- item 12: planning without the data, from any folder ------------------------------------------------

@pytest.mark.parametrize("preset", ["paper", "gpu"])
def test_plan_prices_a_grid_before_the_data_is_downloaded_from_any_folder(capsys, tmp_path, monkeypatch, preset):
    monkeypatch.chdir(tmp_path)                       # no leaderboard/throughputs/ and no results/ here
    monkeypatch.delenv("UEBENCH_DATA", raising=False)
    code, out, err = _run(capsys, "plan", "--preset", preset, "--attacks", "em,tap", "--defenses", "none,iss-gray",
                          "--data-root", str(tmp_path / "no-data"), "--device", "cpu")
    assert code == 0, err
    seeds = 3 if preset == "paper" else 1
    assert len(out.strip().splitlines()) == 3 * 2 * seeds
    protected = 40_000 if preset == "paper" else 8_000
    assert f"cifar10 is not on disk: planned from its known sizes ({protected} protected" in err
    assert "device-hours" in err and "no cost estimate" not in err
    assert not any(tmp_path.rglob("*.json"))


def test_plan_has_its_own_help_and_is_listed(capsys):
    with pytest.raises(SystemExit) as done:
        main(["plan", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: uebench plan") and "--throughputs" in out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "plan" in capsys.readouterr().out.split("positional arguments")[1].split("options")[0]
