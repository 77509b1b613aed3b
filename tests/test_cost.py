"""The cost model: a plan's device time, scaled from a reference table's timings by measured throughputs."""
from __future__ import annotations

import json
import statistics

import pytest

from uebench.cli import main
from uebench.cost import Throughputs, estimate, load_throughputs, reference_records
from uebench.plan import RunSpec, make_plan
from uebench.runner import run

SMALL = {"epochs": 1, "n_protected": 128, "n_reference": 64, "test_subset": 100}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A small table that ran: its records hold the timings the model scales."""
    results = tmp_path_factory.mktemp("cost") / "results"
    spec = RunSpec(attacks="random-noise,classwise-noise", defenses="iss-gray", preset="smoke", device="cpu",
                   overrides=SMALL, results_dir=results, progress=False)
    records = run(spec)
    return results, records[0].table.id, records


def test_a_bigger_table_on_a_faster_device_costs_what_the_throughputs_say(reference):
    results, table_id, records = reference
    bigger = make_plan(RunSpec(attacks="random-noise,classwise-noise", defenses="iss-gray", preset="smoke",
                               device="cpu", overrides={**SMALL, "epochs": 3, "n_protected": 256},
                               results_dir=results.parent / "target", progress=False))
    here = Throughputs("cpu", {"train-smallcnn": 100.0, "pgd-smallcnn": 100.0})
    faster = Throughputs("fast", {"train-smallcnn": 400.0, "pgd-smallcnn": 50.0})
    cost = estimate(bigger, reference_records(results, table_id), here, faster)
    fit = {d: statistics.median(r.timing["fit_s"] for r in records if r.defense.folder == d) for d in ("none", "iss-gray")}
    poison = {a: r.timing["poison_s"] for r in records if (a := r.attack.folder) != "clean"}
    # 3 rows × (2 × 3 epochs) / (1 × 1) at a quarter of the time per image; poisons: 2× images at half the rate
    assert cost.cells_s == pytest.approx(3 * (fit["none"] + fit["iss-gray"]) * 6 / 4)
    assert cost.poison_s == pytest.approx(sum(poison.values()) * 2 * 2)
    assert cost.unknown == [] and cost.total_h == pytest.approx((cost.cells_s + cost.poison_s) / 3600)


def test_cells_without_a_reference_are_named_not_guessed(reference):
    results, table_id, _ = reference
    plan = make_plan(RunSpec(attacks="em", defenses="cutout", preset="smoke", device="cpu", overrides=SMALL,
                             results_dir=results.parent / "other", progress=False))
    same = Throughputs("cpu", {"train-smallcnn": 1.0, "pgd-smallcnn": 1.0})
    cost = estimate(plan, reference_records(results, table_id), same, same)
    assert "poison set em" in cost.unknown and "cell em × cutout" in cost.unknown
    assert "cell clean × none" not in cost.unknown


def test_uebench_plan_prints_the_estimate_from_a_benchmark_file(reference, tmp_path, capsys, monkeypatch):
    results, table_id, _ = reference
    bench = {"benchmarks": [{"extra_info": {"throughput": name, "device": "cpu", "images_per_s": 50.0}}
                            for name in ("train-smallcnn", "pgd-smallcnn", "train-resnet18", "pgd-resnet18")]}
    (tmp_path / "leaderboard" / "throughputs").mkdir(parents=True)
    (tmp_path / "leaderboard" / "throughputs" / "cpu.json").write_text(json.dumps(bench))
    monkeypatch.setattr("uebench.cost.PROJECT", tmp_path)       # a checkout of uebench without a `cpu` table
    monkeypatch.setattr("uebench.cost.THROUGHPUTS", tmp_path / "leaderboard" / "throughputs")
    assert load_throughputs(tmp_path / "leaderboard" / "throughputs" / "cpu.json").rate("pgd", "resnet18") == 50.0
    argv = ["plan", "--preset", "smoke", "--attacks", "random-noise,classwise-noise", "--defenses", "iss-gray",
            "--results-dir", str(results), "--device", "cpu", "--model", "resnet18",
            *[x for k, v in SMALL.items() for x in (f"--{k.replace('_', '-')}", str(v))]]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "to build: 2 poison set(s), 0 shared model(s)" in err
    assert "no `cpu` table to scale from" in err and "predicted" not in err   # a smoke table is not a `cpu` one
    assert main(argv + ["--reference-table", table_id]) == 0
    assert f"scaled from {table_id}" in capsys.readouterr().err


def test_a_victim_without_measured_throughputs_is_planned_and_said_not_priced(capsys, tmp_path):
    """A model no benchmark has measured yet (uebench list models) still gets its plan; the cost
    line says what is missing instead of ending the command with an error."""
    code = main(["plan", "--preset", "smoke", "--epochs", "1", "--attacks", "random-noise", "--defenses", "none",
                 "--model", "vgg16-w0.25", "--results-dir", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert len(out.strip().splitlines()) == 2                     # clean and random-noise under none
    assert "no cost estimate: the throughputs of" in err and "lack train-vgg16-w0.25" in err


def test_a_cross_architecture_table_is_priced_from_the_tables_this_machine_ran(reference, tmp_path):
    """A victim no benchmark measured gets the rate its own committed table shows against the
    reference table (no-defense cells, per image and epoch); its poisons are priced at the
    surrogate's rate, not the victim's (before, a cross-architecture plan asked for pgd-<victim>),
    and an attack the reference table lacks is timed from another table that crafted it."""
    from uebench.cost import tables_like, with_victim_rates
    results, table_id, records = reference
    cross = RunSpec(attacks="random-noise,lsp", defenses="none", preset="smoke", device="cpu", results_dir=results,
                    overrides={**SMALL, "model": "resnet18-w0.25", "surrogate": "smallcnn"}, progress=False)
    cross_records = run(cross)
    others = tables_like([results], records[0].table)
    rates = with_victim_rates(Throughputs("cpu", {"train-smallcnn": 100.0, "pgd-smallcnn": 100.0}), records, others)

    def per_image_epoch(rs):
        return statistics.median(r.timing["fit_s"] for r in rs if r.defense.name == "none")
    expected = 100.0 * per_image_epoch(records) / per_image_epoch(cross_records)   # same images and epochs
    assert rates.rate("train", "resnet18-w0.25") == pytest.approx(expected)
    plan = make_plan(RunSpec(attacks="lsp", defenses="iss-gray", preset="smoke", device="cpu", results_dir=tmp_path / "new",
                             overrides={**SMALL, "model": "resnet18-w0.25", "surrogate": "smallcnn"}, progress=False))
    cost = estimate(plan, reference_records(results, table_id), rates, rates, poisons_from=others)
    lsp_s = next(r.timing["poison_s"] for r in cross_records if r.attack.name == "lsp")
    assert cost.unknown == [] and cost.poison_s == pytest.approx(lsp_s)
