"""Exports for papers and notebooks: the leaderboard's numbers as csv, json, latex and a DataFrame."""
from __future__ import annotations

import io
import json

import pandas as pd
import pytest

import uebench
from test_leaderboard import TABLE, _write_fixture
from uebench.cli import main


@pytest.fixture
def results(tmp_path):
    _write_fixture(tmp_path / "results")
    return tmp_path / "results"


def test_load_table_gives_mean_std_and_seeds_per_cell(results):
    df = uebench.load_table(results)
    em_gray = df[(df.attack == "em") & (df.defense == "iss-gray")].iloc[0]
    assert em_gray["mean"] == pytest.approx(67.0) and em_gray["std"] == pytest.approx(1.4142, abs=1e-3)
    assert em_gray["seeds"] == 2 and em_gray["budget"] == "L∞ 8/255" and em_gray["protocol"] == "supervised"
    assert not ((df.attack == "em") & (df.defense == "mixup")).any()        # failed: no number
    wide = df.pivot(index="attack", columns="defense", values="mean")
    assert wide.loc["clean", "none"] == pytest.approx(76.0)


def test_csv_and_json_carry_the_same_numbers_and_the_protocol(results, capsys):
    assert main(["export", "--results-dir", str(results)]) == 0
    csv = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert len(csv) == 8 and set(csv.columns) >= {"attack", "defense", "mean", "std", "seeds", "protocol"}
    assert main(["export", "--results-dir", str(results), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tables"][TABLE["id"]]["protocol"].startswith("supervised; victim `smallcnn` trained 15 epochs")
    assert {(c["attack"], c["defense"]): round(c["mean"], 2) for c in data["cells"]} == \
           {(r.attack, r.defense): round(r.mean, 2) for r in csv.itertuples()}


def test_latex_is_a_booktabs_table_with_the_protocol_in_its_caption(results, tmp_path):
    out = tmp_path / "paper" / "table.tex"
    assert main(["export", "--results-dir", str(results), "--format", "latex", "--table", TABLE["id"],
                 "--out", str(out)]) == 0
    tex = out.read_text()
    assert tex.count(r"\begin{tabular}{lccc}") == 1 and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"Protocol: supervised; victim smallcnn trained 15 epochs" in tex and "`" not in tex
    assert r"em & 21.0 $\pm$ 1.4 & 67.0 $\pm$ 1.4 & -- \\" in tex              # mixup failed: a dash
    assert r"npz-toy" in tex and r"iss-gray" in tex


def test_bad_export_requests_get_one_line(results, capsys):
    assert main(["export", "--results-dir", str(results), "--format", "xml"]) == 2
    assert "unknown --format 'xml': use csv, json, latex" in capsys.readouterr().err
    assert main(["export", "--results-dir", str(results), "--table", "nope"]) == 2
    assert "no finished cells in table 'nope'" in capsys.readouterr().err
