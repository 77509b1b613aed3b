"""The runner end to end on the smoke preset: records, resume, caching, isolation, budget, data access."""
from __future__ import annotations

import json
import textwrap
from dataclasses import replace

import numpy as np
import pytest
import torch

from registry_sandbox import sandbox_registries
from uebench.data import load_dataset
from uebench.records import SCHEMA_VERSION, checksum, read_record, write_record
from uebench.plan import RunSpec, make_plan
from uebench.runner import run

# A file plugin that counts its work in files, fails on demand, cheats on demand and
# records what data the defense was given.
PLUGIN = textwrap.dedent('''
    import json, os
    from dataclasses import dataclass
    from pathlib import Path
    import torch
    from uebench import Attack, Defense, ThreatModel, register_attack, register_defense

    LOG = Path(os.environ["UEBENCH_TEST_LOG"])

    def tick(name):
        with open(LOG / name, "a") as f:
            f.write("x")

    @register_attack
    @dataclass
    class Counting(Attack):
        name = "counting"
        paper = "test"
        eps: float = 4 / 255
        overshoot: float = 1.0     # > 1 breaks the declared budget

        def threat_model(self):
            return ThreatModel("linf", self.eps)

        def generate(self, x, y, ctx):
            tick("generate")
            sign = torch.where(torch.rand(x.shape, generator=ctx.generator()) < 0.5, -1.0, 1.0)
            return (x + sign * self.eps * self.overshoot).clamp(0, 1)

    @register_attack
    @dataclass
    class Crashing(Attack):
        name = "crashing"
        paper = "test"

        def threat_model(self):
            return ThreatModel("linf", 8 / 255)

        def generate(self, x, y, ctx):
            raise RuntimeError("this plugin always crashes")

    @register_defense
    @dataclass
    class Spy(Defense):
        name = "spy"
        paper = "test"

        def fit(self, x, y, reference, ctx):
            tick("fit")
            (LOG / "seen.json").write_text(json.dumps({
                "train": x.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).reshape(len(x), -1).tolist(),
                "reference": reference[0].mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).reshape(len(reference[0]), -1).tolist()}))
            ctx.previews["inverted"] = 1 - x[:3]
            return super().fit(x, y, reference, ctx)
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The plugin file, loaded fresh for each test (the registries are restored afterwards)."""
    sandbox_registries(monkeypatch)
    log = tmp_path / "log"
    log.mkdir()
    monkeypatch.setenv("UEBENCH_TEST_LOG", str(log))
    path = tmp_path / "plugin_under_test.py"
    path.write_text(PLUGIN)
    return path, log


def _spec(tmp_path, plugin_path, **kw):
    base = dict(preset="smoke", overrides={"epochs": 1}, results_dir=tmp_path / "results", progress=False,
                plugins=[str(plugin_path)], device="cpu")
    return RunSpec(**{**base, **kw})


def _count(log, name):
    path = log / name
    return len(path.read_text()) if path.exists() else 0


def test_grid_records_resume_and_force(tmp_path, plugin):
    path, log = plugin
    spec = _spec(tmp_path, path, attacks="counting", defenses="spy", seeds=[0, 1])
    records = run(spec)
    # (clean + 1 attack) x (none + spy) x 2 seeds
    assert len(records) == 8 and all(r.status == "ok" for r in records)
    assert _count(log, "generate") == 2          # once per seed, shared by both defenses
    assert _count(log, "fit") == 4

    files = sorted((tmp_path / "results").glob("*/*/*/*/seed*.json"))
    assert len(files) == 8
    raw = json.loads(files[0].read_text())
    assert raw["checksum"] == checksum(raw) and raw["schema"] == SCHEMA_VERSION
    rec = read_record(files[0])
    assert rec.to_dict() == {k: v for k, v in raw.items() if k not in ("checksum", "schema")} | {"schema": rec.schema}
    for key in ("uebench_version", "git_commit", "table", "metrics", "device", "threads", "finished"):
        assert getattr(rec, key) is not None, key
    assert rec.table.train["epochs"] == 1 and rec.table.split["n_protected"] == 400
    assert 0.0 <= rec.metrics.test_acc <= 1.0
    assert rec.device == "cpu" and rec.threads == torch.get_num_threads()   # set by the inline worker

    counting = [r for r in records if r.attack.name == "counting"][0]
    assert counting.attack.hparams == {"eps": pytest.approx(4 / 255), "overshoot": 1.0}
    assert counting.budget["linf_max"] == pytest.approx(4 / 255, abs=1e-6)

    # Resume: the same command does no work at all.
    assert make_plan(spec).pending == []
    assert run(spec) == [] and _count(log, "generate") == 2 and _count(log, "fit") == 4

    # A truncated record is detected and only that cell is redone.
    victim = [f for f in files if "/counting/spy/seed1" in f.as_posix()][0]
    victim.write_text(victim.read_text()[:50])
    redone = run(spec)
    assert [(r.attack.name, r.defense.name, r.seed) for r in redone] == [("counting", "spy", 1)]
    assert _count(log, "generate") == 2          # the poison came from the cache
    assert _count(log, "fit") == 5

    # --force recomputes everything, the poisons too.
    assert len(run(_spec(tmp_path, path, attacks="counting", defenses="spy", seeds=[0, 1], force=True))) == 8
    assert _count(log, "generate") == 4


def test_the_same_data_elsewhere_finds_the_same_table_and_caches(tmp_path, plugin):
    """A clone in another folder (CI's, a colleague's) reads the committed records and the
    cached poisons: the table id hashes the data's content, not the path it was read from."""
    path, log = plugin
    digits = load_dataset("digits")
    arrays = dict(x_train=digits.x_train, y_train=digits.y_train, x_test=digits.x_test, y_test=digits.y_test)
    for where in ("here", "there"):
        (tmp_path / where).mkdir()
        np.savez(tmp_path / where / "digits.npz", **arrays)
    here = _spec(tmp_path, path, attacks="counting", defenses="none", dataset=f"npz:{tmp_path / 'here' / 'digits.npz'}")
    there = _spec(tmp_path, path, attacks="counting", defenses="none", dataset=f"npz:{tmp_path / 'there' / 'digits.npz'}")
    records = run(here)
    assert records and all(r.status == "ok" for r in records)
    assert records[0].table.dataset["source"] == str((tmp_path / "here" / "digits.npz").resolve())

    plan = make_plan(there)
    assert plan.table_id == make_plan(here).table_id and plan.pending == []
    assert run(replace(there, results_dir=tmp_path / "fresh", cache_dir=tmp_path / "results" / ".cache"))
    assert _count(log, "generate") == 1          # the poison cache was found too


def test_figure_rows_are_clean_unlearnable_and_the_defenses_preview(tmp_path, plugin):
    from PIL import Image
    path, log = plugin
    spec = _spec(tmp_path, path, attacks="counting", defenses="spy", seeds=[0])
    by_cell = {(r.attack.name, r.defense.name): r for r in run(spec)}
    plan = make_plan(spec)
    assert "figure" not in by_cell["counting", "none"].notes["defense"]    # no preview, no figure
    figure = by_cell["counting", "spy"].notes["defense"]["figure"]
    with Image.open(plan.table_dir / "counting" / "spy" / "seed0" / figure) as png:       # digits: 8×8, gray
        image = torch.from_numpy(np.asarray(png.convert("L")))
    assert image.shape == (3 * 9 + 1, 3 * 9 + 1)          # 3 rows (clean, unlearnable, preview) of 3 images
    x_clean = torch.from_numpy(plan.dataset.x_train[plan.splits.protected[:3]])[..., 0]     # uint8 (3, 8, 8)
    tile = lambda row, col: image[1 + 9 * row:9 + 9 * row, 1 + 9 * col:9 + 9 * col]
    for col in range(3):
        assert (tile(0, col).int() - x_clean[col].int()).abs().max() <= 1               # clean row
        assert 0 < (tile(1, col).int() - x_clean[col].int()).abs().max() <= 5          # ±4/255 noise
        assert (tile(2, col).int() + tile(1, col).int() - 255).abs().max() <= 1         # the inverted preview


def test_a_record_made_with_other_hyperparameters_is_stale(tmp_path, plugin, monkeypatch):
    """Changing a method's preset keeps its folder name, so resume must compare what the record
    was made with: those cells are redone, the others kept."""
    from uebench.registry import ATTACKS
    path, log = plugin
    spec = _spec(tmp_path, path, attacks="counting", defenses="spy", seeds=[0])
    assert len(run(spec)) == 4 and make_plan(spec).pending == []
    monkeypatch.setattr(ATTACKS.get("counting"), "presets", {"smoke": {"eps": 2 / 255}})
    stale = make_plan(spec).pending
    assert sorted((c.attack.folder, c.defense.folder) for c in stale) == [("counting", "none"), ("counting", "spy")]
    redone = run(spec)
    assert [r.attack.hparams["eps"] for r in redone] == pytest.approx([2 / 255, 2 / 255])
    assert make_plan(spec).pending == []


def test_crashing_plugin_is_isolated(tmp_path, plugin):
    path, _ = plugin
    records = run(_spec(tmp_path, path, attacks="crashing,counting", defenses="none"))
    by_attack = {r.attack.name: r for r in records}
    assert by_attack["crashing"].status == "failed"
    assert "this plugin always crashes" in by_attack["crashing"].error
    assert by_attack["counting"].status == "ok" and by_attack["clean"].status == "ok"
    # the failure is on disk too, and the failed cell is retried by the next run
    assert read_record(tmp_path / "results" / records[0].table.dataset["name"] /
                       records[0].table.id / "crashing" / "none" / "seed0.json").status == "failed"
    assert [r.attack.name for r in run(_spec(tmp_path, path, attacks="crashing,counting",
                                                   defenses="none"))] == ["crashing"]


def test_budget_guard_fails_the_cell_before_training(tmp_path, plugin):
    path, log = plugin
    records = run(_spec(tmp_path, path, attacks="counting", defenses="spy",
                        attack_params={"counting": {"overshoot": 1.5}}))
    bad = [r for r in records if r.attack.name == "counting"]
    assert {r.status for r in bad} == {"failed"}
    assert all("L∞" in r.error or "linf" in r.error.lower() for r in bad)
    assert _count(log, "fit") == 1               # only the clean row reached the defense
    # a non-default hyperparameter gets its own folder, so it never overwrites the default
    assert bad[0].attack.folder.startswith("counting@")


def test_defense_never_sees_the_test_set(tmp_path, plugin):
    path, log = plugin
    run(_spec(tmp_path, path, attacks="counting", defenses="spy", overrides={"epochs": 1, "test_subset": None}))
    seen = json.loads((log / "seen.json").read_text())
    ds = load_dataset("digits")
    test_rows = {tuple(r) for r in ds.x_test.reshape(len(ds.x_test), -1).tolist()}
    train_rows = {tuple(r) for r in ds.x_train.reshape(len(ds.x_train), -1).tolist()}
    reference = {tuple(r) for r in seen["reference"]}
    assert len(seen["reference"]) == 200 and len(seen["train"]) == 400
    assert reference <= train_rows                       # clean training images...
    assert not reference & test_rows                     # ...never test images
    overlap = [row for row in seen["train"] if tuple(row) in test_rows]
    assert overlap == []


def test_jobs_give_the_same_numbers(tmp_path, plugin):
    path, _ = plugin
    one = run(_spec(tmp_path / "a", path, attacks="counting", defenses="none"))
    two = run(_spec(tmp_path / "b", path, attacks="counting", defenses="none", jobs=2))
    acc = lambda recs: sorted((r.attack.name, r.metrics.test_acc) for r in recs)
    assert acc(one) == acc(two)
    assert np.isfinite([r.metrics.train_acc for r in two]).all()


def test_a_record_tampered_in_place_is_found_corrupt_and_redone(tmp_path, capsys):
    """An edit that keeps the record's size and time (a digit changed by hand) must not pass
    as finished: planning verifies every checksum and names the file."""
    import os

    from uebench.cli import main
    argv = ["run", "--preset", "smoke", "--epochs", "1", "--attacks", "random-noise", "--defenses", "none",
            "--results-dir", str(tmp_path / "results"), "--quiet", "--device", "cpu"]
    assert main(argv) == 0 and main(argv) == 0                  # the second run resumes: nothing to do
    assert "0 to run" in capsys.readouterr().err
    record = next((tmp_path / "results").rglob("random-noise/none/seed0.json"))
    before = os.stat(record)
    text = record.read_text()
    accuracy = json.loads(text)["metrics"]["test_acc"]
    shown = f'"test_acc": {accuracy}'
    forged = text.replace(shown, shown[:-1] + str((int(shown[-1]) + 1) % 10))     # one digit changed
    assert forged != text
    record.write_text(forged)
    os.utime(record, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(record).st_size == before.st_size and read_record(record) is None

    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"corrupt record {record}" in err and "1 to run" in err
    assert read_record(record).metrics.test_acc == accuracy       # redone, bit for bit


def test_an_edited_plugin_remakes_its_poison_and_its_records(tmp_path, plugin):
    """The poison cache and the records carry a fingerprint of the method's source: after an edit
    of ``generate``, neither the old poison nor the old cells pass as the new code's."""
    from uebench import registry
    path, log = plugin
    spec = _spec(tmp_path, path, attacks="counting", defenses="none")
    first = {r.attack.name: r for r in run(spec)}
    assert first["counting"].attack.code and first["counting"].budget["linf_max"] > 0
    assert make_plan(spec).pending == []

    path.write_text(PLUGIN.replace("return (x + sign * self.eps * self.overshoot).clamp(0, 1)", "return x"))
    registry._LOADED_PLUGINS.clear()                  # as a new process would, import the edited file
    for reg in (registry.ATTACKS, registry.DEFENSES):
        for table in (reg._entries, reg._loaded):
            for name in [n for n, cls in table.items() if getattr(cls, "__module__", "").startswith("uebench_plugin_")]:
                del table[name]
    stale = make_plan(spec).pending
    assert [(c.attack.name, c.defense.name) for c in stale] == [("counting", "none")]   # clean: other code
    again = run(spec)
    assert _count(log, "generate") == 2                       # the poison was made again, by the new code
    assert again[0].budget["linf_max"] == 0 and again[0].attack.code != first["counting"].attack.code


def test_a_legacy_record_without_a_fingerprint_stays_finished(tmp_path, plugin):
    """Legacy records, schema 1 (every committed one), carry no fingerprint and are trusted."""
    path, _ = plugin
    spec = _spec(tmp_path, path, attacks="counting", defenses="none")
    run(spec)
    for record_path in (tmp_path / "results").rglob("seed0.json"):
        record = read_record(record_path)
        record.attack.code = record.defense.code = None      # as written before fingerprints
        write_record(record_path, record)
    assert make_plan(spec).pending == []


def test_a_one_step_schedule_does_not_divide_by_zero():
    """A tiny set in one batch for one epoch: the one-cycle schedule has a single step."""
    from uebench.train import TrainConfig, make_scheduler
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = make_scheduler(opt, TrainConfig(epochs=1), steps_per_epoch=1)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.0
