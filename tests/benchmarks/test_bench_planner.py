"""Planning and resuming a finished grid of 10,000 cells (100 attacks × 100 defenses).

A plugin registers the methods; every cell already has a finished record (written with
``write_record``). Resuming must find nothing to do, fast: ``run`` end to end (plan, scan
for pending cells, reading and checksumming every record) stays under a second. A scan alone
is measured too (``extra_info``).
"""
from __future__ import annotations

import textwrap
import time

import pytest

from registry_sandbox import sandbox_registries
from uebench.records import AttackInfo, DefenseInfo, Metrics, Record, TableInfo, write_record
from uebench.plan import RunSpec, make_plan, scan_records
from uebench.runner import run

N_ATTACKS, N_DEFENSES = 100, 99          # + the clean row and the no-defense column: 101 × 100 cells

PLUGIN = textwrap.dedent(f'''
    from dataclasses import dataclass
    from uebench import Attack, Defense, ThreatModel, register_attack, register_defense

    @dataclass
    class Noise(Attack):
        paper = "benchmark stand-in"

        def threat_model(self):
            return ThreatModel("linf", 8 / 255)

        def generate(self, x, y, ctx):
            return x

    @dataclass
    class Pass(Defense):
        paper = "benchmark stand-in"

    for i in range({N_ATTACKS}):
        register_attack(type(f"Noise{{i}}", (Noise,), {{"name": f"bench-attack-{{i}}", "__module__": __name__}}))
    for i in range({N_DEFENSES}):
        register_defense(type(f"Pass{{i}}", (Pass,), {{"name": f"bench-defense-{{i}}", "__module__": __name__}}))
''')


@pytest.fixture
def finished_grid(tmp_path, monkeypatch):
    from uebench import storage
    sandbox_registries(monkeypatch)
    plugin = tmp_path / "bench_plugin.py"
    plugin.write_text(PLUGIN)
    spec = RunSpec(attacks="bench-attack-*", defenses="bench-defense-*", preset="smoke", device="cpu",
                   results_dir=tmp_path / "results", plugins=[str(plugin)], progress=False)
    plan = make_plan(spec)
    with monkeypatch.context() as m:
        m.setattr(storage.os, "fsync", lambda fd: None)   # setup only: 10,000 disk flushes take minutes
        table = TableInfo(id=plan.table_id, preset="smoke", protocol="supervised", model="smallcnn",
                          dataset={}, train={}, split={})
        for cell in plan.cells:
            write_record(cell.path(plan.table_dir), Record(
                status="ok", seed=cell.seed, table=table, metrics=Metrics(test_acc=0.5, train_acc=0.9),
                attack=AttackInfo(cell.attack.name, cell.attack.folder, cell.attack.params, code=cell.attack.code,
                                  paper="A. Author et al., A paper on unlearnable examples, Venue 2024"),
                defense=DefenseInfo(cell.defense.name, cell.defense.folder, cell.defense.params,
                                    code=cell.defense.code, paper="B. Author et al., Venue 2024"),
                timing={"fit_s": 12.3, "cell_s": 13.4}, notes={"attack": {}, "defense": {}}))
    return spec, plan


@pytest.mark.benchmark
def test_resume_a_finished_grid_of_10000_cells(benchmark, finished_grid):
    spec, plan = finished_grid
    assert len(plan.cells) == (N_ATTACKS + 1) * (N_DEFENSES + 1) >= 10_000

    start = time.perf_counter()
    assert scan_records(plan.cells, plan.table_dir) == ([], [])       # reads and checksums every record
    benchmark.extra_info["scan_s"] = round(time.perf_counter() - start, 3)

    assert benchmark.pedantic(run, args=(spec,), rounds=5, iterations=1) == []
    benchmark.extra_info["cells"] = len(plan.cells)
    benchmark.extra_info["cells_per_s"] = round(len(plan.cells) / benchmark.stats.stats.min)
    # the fastest round: the other rounds measure the load of a shared machine too
    assert benchmark.stats.stats.min < 1.0

