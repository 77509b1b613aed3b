"""The detection protocol (``--protocol detection``) and the built-in detectors, on real smoke runs.

A spy detector (a plugin file) keeps what it was handed and scores with a rule the test knows, so
the tests check the mix, the mask, the AUROC and the table against the images themselves.
"""
from __future__ import annotations

import csv
import io
import textwrap

import pytest
import torch

from registry_sandbox import sandboxed_plugin
from uebench import leaderboard
from uebench.data import to_tensor
from uebench.export import export
from uebench.plan import RunSpec, make_plan
from uebench.protocols.detection import POISONED_FRACTION, auroc
from uebench.ratio import indices_sha256, poisoned_indices
from uebench.registry import UserError
from uebench.runner import run

SPY = textwrap.dedent('''
    from dataclasses import dataclass
    import torch
    from uebench import Detector, register_defense

    @register_defense
    @dataclass
    class SpyDetect(Detector):
        """Scores each image by its mean pixel value and keeps what it was given."""
        name = "spy-detect"
        paper = "test"

        def score(self, x, y, reference, ctx):
            ctx.artifact_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"x": x.clone(), "y": y.clone(), "reference": reference[0].clone()},
                       ctx.artifact_dir / "seen.pt")
            return x.flatten(1).mean(1)

    @register_defense
    @dataclass
    class BadDetect(Detector):
        """Returns one score too few."""
        name = "bad-detect"
        paper = "test"

        def score(self, x, y, reference, ctx):
            return torch.zeros(len(x) - 1)
''')

SMOKE = {"epochs": 1, "n_protected": 128, "n_reference": 64, "test_subset": 100}


@pytest.fixture
def spy(tmp_path, monkeypatch):
    return sandboxed_plugin(tmp_path, monkeypatch, SPY, "spy_plugin")


def spec(tmp_path, plugin, **kw) -> RunSpec:
    base = dict(preset="smoke", attacks="classwise-noise", defenses="spy-detect", seeds=[0],
                overrides={**SMOKE, "protocol": "detection"}, results_dir=tmp_path / "results", progress=False,
                plugins=[plugin], device="cpu")
    return RunSpec(**{**base, **kw})


def test_auroc_is_the_rank_statistic():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    mask = torch.tensor([False, False, True, True])
    # pairs (poisoned, clean) ordered right: (0.35 > 0.1), (0.8 > 0.1), (0.8 > 0.4); wrong: (0.35 < 0.4)
    assert auroc(scores, mask) == pytest.approx(3 / 4)
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([True, False])) == pytest.approx(0.5)   # a tie counts half
    assert auroc(scores, torch.zeros(4, dtype=torch.bool)) == 0.5


def test_a_detection_cell_scores_a_seeded_half_poisoned_mix_without_the_test_split(tmp_path, spy, monkeypatch):
    import uebench.job

    def no_test_split(job):
        raise AssertionError("the detection protocol read the test split")
    monkeypatch.setattr(uebench.job, "test_split", no_test_split)
    import uebench.cell
    monkeypatch.setattr(uebench.cell, "test_split", no_test_split)

    s = spec(tmp_path, spy)
    plan = make_plan(s)
    assert sorted((c.attack.name, c.defense.name) for c in plan.cells) == [
        ("classwise-noise", "spy-detect"), ("clean", "spy-detect")]        # no `none` column: nothing to detect with
    records = {r.attack.name: r for r in run(s, plan)}
    assert all(r.status == "ok" for r in records.values()), [r.error for r in records.values()]

    poison_file, = (tmp_path / "results" / ".cache" / "poisons").glob("classwise-noise-*.pt")
    x_poison = torch.load(poison_file, weights_only=False)["x"]
    x_clean = to_tensor(plan.dataset.x_train[plan.splits.protected])
    chosen = poisoned_indices(128, POISONED_FRACTION, plan.config.split_seed, 0)
    mask = torch.zeros(128, dtype=torch.bool)
    mask[chosen] = True
    seen = torch.load(plan.table_dir / "classwise-noise" / "spy-detect" / "seed0" / "seen.pt")
    assert torch.equal(seen["x"], torch.where(mask[:, None, None, None], x_poison, x_clean))   # half poisoned
    assert torch.equal(seen["reference"], to_tensor(plan.dataset.x_train[plan.splits.reference]))

    record = records["classwise-noise"]
    assert record.notes["defense"]["mask"]["n_poisoned"] == 64
    assert record.notes["defense"]["mask"]["indices_sha256"] == indices_sha256(chosen)
    scores = seen["x"].flatten(1).mean(1)
    assert record.metrics.auroc == pytest.approx(auroc(scores, mask))
    assert record.metrics.flag_acc == pytest.approx(float(((scores > 0.5) == mask).float().mean()))
    assert record.metrics.n_poisoned == 64 and record.metrics.test_acc is None and record.metrics.n_test is None
    assert record.table.protocol == "detection"


def test_the_detection_table_names_its_metric_everywhere(tmp_path, spy):
    s = spec(tmp_path, spy)
    records = run(s)
    text = leaderboard.render(tmp_path / "results")
    assert "· detection ·" in text and "**Metric**: detection AUROC (%)" in text and "best detector per attack" in text
    assert "| attack" in text and "spy-detect" in text and "| none" not in text
    rows = list(csv.DictReader(io.StringIO(export(tmp_path / "results", "csv"))))
    assert {r["metric"] for r in rows} == {"detection AUROC"} and {r["defense"] for r in rows} == {"spy-detect"}
    record = next(r for r in records if r.attack.name == "classwise-noise")
    assert float(next(r for r in rows if r["attack"] == "classwise-noise")["mean"]) == \
        pytest.approx(100 * record.metrics.auroc, abs=0.01)
    assert "detection AUROC" in export(tmp_path / "results", "latex")


def test_all_picks_detectors_for_detection_and_defenses_elsewhere(tmp_path, spy):
    detection = make_plan(spec(tmp_path, spy, attacks="em", defenses="all"))
    picked = {c.defense.name for c in detection.cells}
    assert picked >= {"spy-detect", "simple-net-detect", "bias-shift-detect", "residual-detect"}
    assert all("detect" in name for name in picked)
    supervised = make_plan(spec(tmp_path, spy, attacks="em", defenses="all", overrides=dict(SMOKE)))
    assert not any("detect" in c.defense.name for c in supervised.cells) and "none" in {c.defense.name for c in supervised.cells}
    wild = make_plan(spec(tmp_path, spy, attacks="em", defenses="*", overrides=dict(SMOKE)))
    assert not any("detect" in c.defense.name for c in wild.cells)


def test_a_detector_named_in_a_supervised_table_and_a_defense_in_a_detection_table_are_not_applicable(tmp_path, spy):
    records = run(spec(tmp_path, spy, defenses="spy-detect", overrides=dict(SMOKE)))
    assert {r.defense.name: r.status for r in records} == {"none": "ok", "spy-detect": "not-applicable"}
    records = run(spec(tmp_path, spy, defenses="iss-jpeg", results_dir=tmp_path / "other"))
    assert {r.status for r in records} == {"not-applicable"}


def test_detection_refuses_a_poison_ratio(tmp_path, spy):
    with pytest.raises(UserError, match="leave out --poison-ratio"):
        make_plan(spec(tmp_path, spy, poison_ratios=[0.5]))


def test_a_detector_that_returns_a_wrong_number_of_scores_fails_its_cell_in_one_line(tmp_path, spy):
    records = {r.defense.name: r for r in run(spec(tmp_path, spy, defenses="bad-detect,spy-detect"))
               if r.attack.name == "classwise-noise"}
    assert records["bad-detect"].status == "failed"
    assert "one finite score per image (128)" in records["bad-detect"].error
    assert records["spy-detect"].status == "ok"                         # the other cell goes on


def test_builtin_detectors_run_a_smoke_cell_and_give_one_score_per_image(tmp_path, spy):
    records = run(spec(tmp_path, spy, defenses="simple-net-detect,bias-shift-detect,residual-detect"))
    assert {r.status for r in records} == {"ok"}, [r.error for r in records]
    for r in records:
        assert 0 <= r.metrics.auroc <= 1 and r.metrics.n_train == 128
    nets = [r for r in records if r.defense.name != "residual-detect"]
    assert all(0 <= r.notes["defense"]["heldout_accuracy"] <= 1 for r in nets)


def test_detector_hyperparameters_are_checked():
    from uebench.defenses.bias_shift_detect import BiasShiftDetect
    from uebench.defenses.residual_detect import ResidualDetect
    from uebench.defenses.simple_net_detect import SimpleNetDetect
    for bad in (lambda: SimpleNetDetect(network="cnn"), lambda: SimpleNetDetect(folds=1),
                lambda: BiasShiftDetect(shift=0.0), lambda: ResidualDetect(quantile=1.0)):
        with pytest.raises(ValueError):
            bad()


def test_a_detector_trains_no_victim():
    from uebench.defenses.residual_detect import ResidualDetect
    with pytest.raises(TypeError, match="it trains no victim"):
        ResidualDetect().fit(None, None, None, None)
