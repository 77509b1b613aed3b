"""The leaderboard is a pure function of the records: golden markdown, byte-identical reruns."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from uebench import leaderboard
from uebench.records import Record, checksum, write_record

GOLDEN = Path(__file__).parent / "golden" / "leaderboard.md"

TABLE = {"id": "supervised-smallcnn-15ep-abc123", "preset": "cpu", "protocol": "supervised", "model": "smallcnn",
         "dataset": {"name": "npz-toy", "shape": [3, 32, 32], "fingerprint": "f" * 16},
         "train": {"epochs": 15, "lr": 0.1, "schedule": "onecycle", "momentum": 0.9, "nesterov": True,
                   "weight_decay": 0.0005, "batch_size": 128, "crop_pad": 4},
         "split": {"n_protected": 8000, "n_reference": 2000, "n_test": 2000, "split_seed": 0}, "contrastive": {}}
THREATS = {"clean": ("none", 0.0, "unbounded"), "em": ("linf", 8 / 255, "L∞ 8/255"), "ops": ("l0", 1, "L0 1 px")}
ACCURACY = {  # (attack, defense): per-seed accuracies, or a status
    ("clean", "none"): [0.75, 0.77], ("clean", "iss-gray"): [0.70, 0.71], ("clean", "mixup"): [0.76, 0.74],
    ("em", "none"): [0.20, 0.22], ("em", "iss-gray"): [0.68, 0.66], ("em", "mixup"): "failed",
    ("ops", "none"): [0.31, 0.33], ("ops", "iss-gray"): [0.30, 0.30], ("ops", "mixup"): [0.52, 0.50],
}


def _write_fixture(results: Path, table=TABLE, dataset_dir="npz-toy"):
    for (attack, defense), values in ACCURACY.items():
        for seed in (0, 1):
            status = values if isinstance(values, str) else "ok"
            norm, eps, text = THREATS[attack]
            record = {"uebench_version": "0.1.0", "git_commit": "0123456789abcdef", "table": table, "seed": seed,
                      "attack": {"name": attack, "folder": attack, "hparams": {},
                                 "threat_model": {"norm": norm, "eps": eps, "text": text}},
                      "defense": {"name": defense, "folder": defense, "hparams": {}, "protocols": ["supervised"]},
                      "status": status, "error": "RuntimeError: out of memory" if status == "failed" else None,
                      "metrics": {"test_acc": values[seed]} if status == "ok" else None,
                      "notes": {"defense": {"figure": "examples.png"}} if defense == "iss-gray" and seed == 0 else {},
                      "finished": f"2026-01-0{seed + 1}T00:00:00+00:00"}
            write_record(results / dataset_dir / table["id"] / attack / defense / f"seed{seed}.json",
                         Record.from_dict(record))


def test_golden_markdown(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                       # as in a checkout: the records under results/
    _write_fixture(tmp_path / "results")
    text = leaderboard.render(tmp_path / "results")
    if os.environ.get("UEBENCH_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_table_content(tmp_path):
    _write_fixture(tmp_path / "results")
    text = leaderboard.render(tmp_path / "results")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ") and not line.startswith("| attack")}
    assert rows["clean"] == ["unbounded", "76.0 ± 1.4", "70.5 ± 0.7", "75.0 ± 1.4"]   # columns: none first
    assert rows["em"] == ["L∞ 8/255", "21.0 ± 1.4", "**67.0 ± 1.4**", "failed"]
    assert rows["ops"][-1] == "**51.0 ± 1.4**"
    assert "em / mixup / seed 0: RuntimeError: out of memory" in text
    assert "(../results/npz-toy/supervised-smallcnn-15ep-abc123/em/iss-gray/seed0/examples.png)" in text


def test_same_records_give_identical_bytes_and_protocols_stay_apart(tmp_path, monkeypatch):
    rendered = []
    for clone in ("a", "b"):                       # two checkouts, each rendering its own results/
        _write_fixture(tmp_path / clone / "results")
        monkeypatch.chdir(tmp_path / clone)
        rendered.append(leaderboard.render(Path("results")))
    assert rendered[0] == rendered[1]
    other = dict(TABLE, id="contrastive-smallcnn-15ep-def456", protocol="contrastive")
    _write_fixture(tmp_path / "a" / "results", table=other)
    text = leaderboard.render(tmp_path / "a" / "results")
    assert text.count("## npz-toy") == 2 and "· contrastive ·" in text


def test_corrupt_record_is_listed_not_counted(tmp_path):
    _write_fixture(tmp_path / "results")
    victim = tmp_path / "results" / "npz-toy" / TABLE["id"] / "em" / "none" / "seed1.json"
    victim.write_text(victim.read_text()[:40])
    text = leaderboard.render(tmp_path / "results")
    assert "| 20.0 (n=1) |" in text                  # only seed 0 remains, and the table says so
    assert "em/none/seed1.json" in text.split("Unreadable records")[1]


@pytest.mark.parametrize("empty", [True])
def test_empty_results(tmp_path, empty):
    assert "No results yet" in leaderboard.render(tmp_path)


def test_a_record_without_its_attack_is_reported_and_the_rest_rendered(tmp_path, capsys):
    """A failed cell written before it knew its attack (old runs did) must not take the
    leaderboard down: it is named on stderr and in the markdown, and the command exits 1."""
    from uebench.cli import main
    _write_fixture(tmp_path / "results")
    bad = tmp_path / "results" / "npz-toy" / TABLE["id"] / "em" / "cutout" / "seed0.json"
    broken = {"status": "failed", "seed": 0, "error": "ValueError: bad eps", "metrics": {}, "table": TABLE}   # no attack
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps({**broken, "checksum": checksum(broken)}))
    text = leaderboard.render(tmp_path / "results")
    em_row = next(line for line in text.splitlines() if line.startswith("| em "))
    assert [c.strip() for c in em_row.split("|")[2:-1]] == ["L∞ 8/255", "21.0 ± 1.4", "**67.0 ± 1.4**", "failed"]
    assert "`npz-toy/supervised-smallcnn-15ep-abc123/em/cutout/seed0.json`: lacks attack" in text
    out = tmp_path / "board.md"
    assert main(["leaderboard", "--results-dir", str(tmp_path / "results"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"corrupt record {bad}" in err and out.exists()
    assert main(["leaderboard", "--results-dir", str(tmp_path / "results"), "--out", str(out), "--check"]) == 1


def test_a_scratch_leaderboard_names_its_own_records_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "..")
    _write_fixture(tmp_path / "scratch")
    text = leaderboard.render(tmp_path / "scratch")
    assert f"from the records under `{tmp_path.name}/scratch/`" in text and "under `results/`" not in text


def test_each_table_gets_a_heatmap_that_check_can_tell_stale(tmp_path):
    from uebench.cli import main
    from uebench.heatmap import data_key, drawn_from
    _write_fixture(tmp_path / "results")
    out = tmp_path / "board" / "LEADERBOARD.md"
    assert main(["leaderboard", "--results-dir", str(tmp_path / "results"), "--out", str(out)]) == 0
    png = out.parent / f"heatmap-npz-toy-{TABLE['id']}.png"
    assert f"]({png.name})" in out.read_text() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    frame, title = leaderboard.heatmaps(tmp_path / "results")[png.name]
    assert frame.loc["em", "iss-gray"] == pytest.approx(67.0) and frame.loc["clean", "none"] == pytest.approx(76.0)
    assert list(frame.index)[0] == "clean" and list(frame.columns)[0] == "none"
    assert pd.isna(frame.loc["em", "mixup"])                      # failed: no number, a grey cell
    assert drawn_from(png) == data_key(frame, title)
    check = ["leaderboard", "--results-dir", str(tmp_path / "results"), "--out", str(out), "--check"]
    assert main(check) == 0
    record = tmp_path / "results" / "npz-toy" / TABLE["id"] / "ops" / "mixup" / "seed1.json"
    record.unlink()                                               # the numbers change: the picture is stale
    out.write_text(leaderboard.render(tmp_path / "results", results_link="../results"))
    assert main(check) == 1
    assert main(check[:-1]) == 0 and main(check) == 0             # redrawn


def test_a_cell_made_by_older_method_code_is_marked_not_mixed_in_silently(tmp_path):
    """A record whose defense fingerprint differs from the defense's code today (the method changed
    after the run) is shown with † and a footnote, in the markdown, the web page and the export;
    one made by today's code is not."""
    from uebench.export import load_table
    from uebench.registry import DEFENSES
    from uebench.site import build_site
    from uebench.storage import code_fingerprint

    results = tmp_path / "results"
    _write_fixture(results)
    table_dir = results / "npz-toy" / TABLE["id"]
    for defense, code in (("iss-gray", "0" * 12), ("mixup", code_fingerprint(DEFENSES.get("mixup")))):
        for path in (table_dir / "ops" / defense).glob("seed*.json"):
            data = json.loads(path.read_text())
            data["defense"]["code"], data["schema"] = code, 3
            write_record(path, Record.from_dict(data))
    text = leaderboard.render(results)
    ops = next(line for line in text.splitlines() if line.startswith("| ops"))
    assert "30.0 ± 0.0 †" in ops and "51.0 ± 1.4**" in ops and ops.count("†") == 1
    assert "†: made by an earlier version of the method's code" in text
    frame = load_table(results)
    assert frame[frame.outdated][["attack", "defense"]].values.tolist() == [["ops", "iss-gray"]]
    build_site(results, tmp_path / "site")
    assert (tmp_path / "site" / "index.html").read_text().count("†</span>") == 1


def test_a_defense_within_the_seeds_spread_of_the_best_is_marked(tmp_path, monkeypatch):
    """Issue 30, item 5: ops under iss-gray (50.5 ± 2.1) is 0.5 below the best, mixup (51.0 ± 1.4):
    within the spread, so marked ≈ in the markdown, on the web page and in the export; ops under
    none (32 ± 1.4) and every cell of a one-seed row are not."""
    from uebench.export import load_table
    from uebench.site import build_site

    monkeypatch.setitem(ACCURACY, ("ops", "iss-gray"), [0.49, 0.52])
    results = tmp_path / "results"
    _write_fixture(results)
    text = leaderboard.render(results)
    ops = next(line for line in text.splitlines() if line.startswith("| ops"))
    assert "50.5 ± 2.1 ≈" in ops and ops.count("≈") == 1 and "**51.0 ± 1.4**" in ops
    assert "≈: within the seeds' spread of the row's best" in text
    build_site(results, tmp_path / "site")
    assert (tmp_path / "site" / "index.html").read_text().count("≈</span>") == 1
    frame = load_table(results)
    assert frame[frame.within_spread][["attack", "defense"]].values.tolist() == [["ops", "iss-gray"]]

    for path in results.glob("**/seed1.json"):       # one seed: no spread, no mark
        path.unlink()
    assert "≈" not in leaderboard.render(results)
