"""--poison-ratio: a seeded part of the protected split poisoned, the rest clean, and the clean-part reference.

Real smoke runs (digits, 128 protected images, 1 epoch) of a built-in attack under a defense plugin that
keeps what it was given to train on, so the tests see the training set itself, not the code's account of it.
"""
from __future__ import annotations

import hashlib
import json
import textwrap

import pytest
import torch

from registry_sandbox import sandbox_registries
from uebench.data import to_tensor
from uebench.plan import RunSpec, make_plan
from uebench.ratio import CLEAN_PART, indices_sha256, parse_ratios, poisoned_indices
from uebench.registry import UserError
from uebench.runner import run

SPY = textwrap.dedent('''
    import hashlib
    from dataclasses import dataclass
    import torch
    from uebench import Defense, register_defense

    @register_defense
    @dataclass
    class Keeper(Defense):
        """Trains as usual, and keeps a hash and a copy of the images it was given."""
        name = "keeper"
        paper = "test"

        def fit(self, x, y, reference, ctx):
            ctx.notes["x_sha256"] = hashlib.sha256(x.numpy().tobytes()).hexdigest()
            ctx.artifact_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"x": x.clone(), "y": y.clone()}, ctx.artifact_dir / "seen.pt")
            return super().fit(x, y, reference, ctx)
''')

SMOKE = {"epochs": 1, "n_protected": 128, "n_reference": 64, "test_subset": 100}


@pytest.fixture
def keeper(tmp_path, monkeypatch):
    sandbox_registries(monkeypatch)
    path = tmp_path / "keeper_plugin.py"
    path.write_text(SPY)
    return str(path)


def spec(tmp_path, plugin, folder="results", **kw) -> RunSpec:
    base = dict(preset="smoke", attacks="classwise-noise", defenses="keeper", seeds=[0], overrides=dict(SMOKE),
                results_dir=tmp_path / folder, progress=False, plugins=[plugin], device="cpu")
    return RunSpec(**{**base, **kw})


def seen(record_path):
    return torch.load(record_path.with_suffix("") / "seen.pt")


def by_cell(records):
    return {(r.attack.name, r.defense.name, (r.poison or {}).get("ratio", 1.0)): r for r in records}


def test_the_draw_is_seeded_nested_and_leaves_the_global_generator_alone():
    state = torch.get_rng_state()
    a = poisoned_indices(1000, 0.5, split_seed=0, seed=0)
    assert torch.equal(torch.get_rng_state(), state)                      # never the global RNG
    assert torch.equal(a, poisoned_indices(1000, 0.5, 0, 0)) and len(a) == 500
    assert torch.equal(a, a.sort().values) and len(set(a.tolist())) == 500
    assert not torch.equal(a, poisoned_indices(1000, 0.5, 0, 1))          # another cell seed
    assert not torch.equal(a, poisoned_indices(1000, 0.5, 1, 0))          # another split seed
    assert set(poisoned_indices(1000, 0.2, 0, 0).tolist()) <= set(a.tolist())   # nested across ratios
    assert indices_sha256(torch.tensor([0, 3, 7])) == hashlib.sha256(b"0,3,7").hexdigest()


def test_a_cell_trains_on_the_poison_at_the_drawn_indices_and_clean_images_elsewhere(tmp_path, keeper):
    s = spec(tmp_path, keeper, poison_ratios=[0.5, 1.0])
    plan = make_plan(s)
    assert len(plan.cells) == 2 + 2 + 2 + 2          # clean, attack at 1; clean-part, attack at 0.5 (x none, keeper)
    cells = by_cell(run(s, plan))
    assert all(r.status == "ok" for r in cells.values())
    poisons = list((tmp_path / "results" / ".cache" / "poisons").glob("classwise-noise-*.pt"))
    assert len(poisons) == 1                          # crafted once, on the whole split, for both ratios
    x_poison = torch.load(poisons[0], weights_only=False)["x"]
    x_clean = to_tensor(plan.dataset.x_train[plan.splits.protected])
    y = torch.from_numpy(plan.dataset.y_train[plan.splits.protected])
    chosen = poisoned_indices(128, 0.5, plan.config.split_seed, 0)

    half = cells[("classwise-noise", "keeper", 0.5)]
    assert half.poison["n_poisoned"] == 64 and half.poison["n_clean"] == 64
    assert half.poison["indices_sha256"] == hashlib.sha256(",".join(map(str, chosen.tolist())).encode()).hexdigest()
    path = plan.table_dir / "classwise-noise" / "keeper" / "seed0-ratio0.5.json"
    got = seen(path)
    expected = x_clean.clone()
    expected[chosen] = x_poison[chosen]
    assert torch.equal(got["x"], expected) and torch.equal(got["y"], y)
    assert half.notes["defense"]["x_sha256"] == hashlib.sha256(expected.numpy().tobytes()).hexdigest()
    assert not torch.equal(expected, x_clean) and not torch.equal(expected, x_poison)
    assert half.budget["linf_max"] == pytest.approx(8 / 255, abs=1e-6)   # the guard saw the poisoned images
    assert half.metrics.n_train == 128

    full = seen(plan.table_dir / "classwise-noise" / "keeper" / "seed0.json")
    assert torch.equal(full["x"], x_poison)
    assert cells[("classwise-noise", "keeper", 1.0)].poison is None

    part = cells[(CLEAN_PART, "keeper", 0.5)]                          # the clean part alone
    keep = torch.ones(128, dtype=torch.bool)
    keep[chosen] = False
    got = seen(plan.table_dir / CLEAN_PART / "keeper" / "seed0-ratio0.5.json")
    assert torch.equal(got["x"], x_clean[keep]) and torch.equal(got["y"], y[keep])
    assert part.metrics.n_train == 64 and part.poison["indices_sha256"] == half.poison["indices_sha256"]

    assert make_plan(s).pending == []                 # resumable: every ratio's cell is found again
    assert [c.ratio for c in make_plan(spec(tmp_path, keeper, poison_ratios=[0.2])).pending] == [0.2] * 4


def test_ratio_one_is_todays_cell(tmp_path, keeper):
    """The default and --poison-ratio 1 (alone or beside other ratios) give the same table, paths and records."""
    def records(folder, ratios):
        s = spec(tmp_path, keeper, folder, attacks="classwise-noise,random-noise", defenses="none", poison_ratios=ratios)
        run(s)
        plan = make_plan(s)
        out = {}
        for cell in (c for c in plan.cells if c.ratio == 1.0):
            raw = json.loads(cell.path(plan.table_dir).read_text())
            out[cell.relpath] = {k: v for k, v in raw.items() if k not in ("checksum", "finished", "timing")}
        return plan.table_id, out

    table, default = records("a", None)
    assert table == "supervised-smallcnn-1ep-158721"          # the id this grid had before ratios existed
    assert sorted(default) == ["classwise-noise/none/seed0.json", "clean/none/seed0.json", "random-noise/none/seed0.json"]
    assert all("poison" not in r for r in default.values())
    assert records("b", [1.0]) == (table, default)
    assert records("c", [0.5, 1.0]) == (table, default)


def test_export_and_leaderboard_keep_the_ratios_apart(tmp_path, keeper):
    from uebench import leaderboard
    from uebench.export import export, load_table
    s = spec(tmp_path, keeper, defenses="none", poison_ratios=[0.5, 1.0])
    run(s)
    results = tmp_path / "results"
    df = load_table(results)
    assert "poison_ratio" in df.columns
    assert sorted(zip(df.attack, df.poison_ratio)) == [("classwise-noise", 0.5), ("classwise-noise", 1.0),
                                                       ("clean", 1.0), (CLEAN_PART, 0.5)]
    assert (df.seeds == 1).all()                       # nothing averaged across ratios
    assert export(results, "csv").splitlines()[0].split(",")[5] == "poison_ratio"
    assert {c["poison_ratio"] for c in json.loads(export(results, "json"))["cells"]} == {0.5, 1.0}
    assert export(results, "latex").count(r"\begin{table}") == 2 and "poison ratio 0.5" in export(results, "latex")

    text = leaderboard.render(results)
    assert text.count("\n## ") == 2 and "· poison ratio 0.5 (`" in text
    one, half = text.split("\n## ")[1:3]
    assert CLEAN_PART not in one.split("|:")[1] and f"| {CLEAN_PART}" in half
    out = leaderboard.write(results, tmp_path / "board" / "LEADERBOARD.md")
    names = sorted(p.name for p in out.parent.glob("*.png"))
    assert len(names) == 3 and any(n.startswith("ratio-") for n in names) and any("-ratio0.5" in n for n in names)
    assert leaderboard.stale_heatmaps(results, out) == []

    from uebench.site import write_site
    page = write_site(results, tmp_path / "site").read_text()
    assert page.count("<table class=\"board\">") == 2 and "· poison ratio 0.5" in page
    assert f'<tr class="clean" data-name="{CLEAN_PART}">' in page and 'src="ratio-' in page
    assert (tmp_path / "site" / names[-1]).exists()


@pytest.mark.parametrize("text", ["0", "1.5", "-0.2", "0.5,0.5", "0.5,0.50", "abc", "", "nan", "inf"])
def test_bad_ratios_are_refused(text):
    with pytest.raises(UserError, match="--poison-ratio"):
        parse_ratios(text)


def test_bad_ratios_exit_2_and_write_nothing(tmp_path, capsys):
    from uebench.cli import main
    for text in ("1.2", "0.5,0.5", "x", "0.001"):      # 0.001 of 128 images poisons none
        out = tmp_path / f"r{text}"
        code = main(["run", "--preset", "smoke", "--attacks", "random-noise", "--defenses", "none", "--n-protected",
                     "128", "--n-reference", "64", "--results-dir", str(out), "--poison-ratio", text])
        err = capsys.readouterr().err
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and "--poison-ratio" in err
        assert not out.exists()
