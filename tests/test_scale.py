"""Scaling out without losing anything: device slots, retries of dead workers, resuming a
killed run, racing record writers, stale temp files, and the Ray backend."""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from registry_sandbox import sandbox_registries
from uebench.cli import main
from uebench.records import AttackInfo, DefenseInfo, Record, iter_records, read_record, write_record
from uebench.plan import RunSpec
from uebench.runner import run
from uebench.workers import Task, Workers, local_workers, remove_stale_temp_files, run_tasks

# Cells log their fits (one line "fit attack/defense/seedK") so a test can tell which cells
# did work; one defense pauses so a run can be killed between cells, one kills its worker.
PLUGIN = textwrap.dedent('''
    import os, signal, time
    from dataclasses import dataclass
    from pathlib import Path
    import torch
    from uebench import Attack, Defense, ThreatModel, register_attack, register_defense

    def log(ctx, event):
        cell = "/".join(Path(ctx.artifact_dir).parts[-3:])
        with open(os.environ["UEBENCH_SCALE_LOG"], "a") as f:
            f.write(f"{event} {cell}\\n")

    @register_attack
    @dataclass
    class Shift(Attack):
        name = "scale-shift"
        paper = "test"
        eps: float = 4 / 255

        def threat_model(self):
            return ThreatModel("linf", self.eps)

        def generate(self, x, y, ctx):
            sign = torch.where(torch.rand(x.shape, generator=ctx.generator()) < 0.5, -1.0, 1.0)
            return (x + sign * self.eps).clamp(0, 1)

    @register_defense
    @dataclass
    class Ticking(Defense):
        name = "scale-ticking"
        paper = "test"
        pause: float = 0.5

        def fit(self, x, y, reference, ctx):
            log(ctx, "fit")
            time.sleep(self.pause)
            return super().fit(x, y, reference, ctx)

    @register_defense
    @dataclass
    class KillsItsWorker(Defense):
        name = "scale-fragile"
        paper = "test"

        def fit(self, x, y, reference, ctx):
            log(ctx, "fit")
            if Path(ctx.artifact_dir).parts[-3] == "clean":
                os.kill(os.getpid(), signal.SIGKILL)
            return super().fit(x, y, reference, ctx)
''')


# the smoke table, smaller still: the machine running CI has two cores
SMALL = {"epochs": 1, "n_protected": 128, "n_reference": 64, "test_subset": 100}


def _fresh_loky_workers():
    """Workers reused from an earlier test would hold that test's plugins and environment."""
    from joblib.externals.loky import get_reusable_executor
    get_reusable_executor().shutdown(wait=True)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    sandbox_registries(monkeypatch)
    log = tmp_path / "fits.log"
    monkeypatch.setenv("UEBENCH_SCALE_LOG", str(log))
    path = tmp_path / "scale_plugin.py"
    path.write_text(PLUGIN)
    _fresh_loky_workers()
    yield path, log
    _fresh_loky_workers()


def _fits(log: Path) -> list[str]:
    return log.read_text().split("\n")[:-1] if log.exists() else []


# -- device slots ------------------------------------------------------------------------

def test_one_worker_per_gpu_by_default():
    four = local_workers("cuda", None, "loky", retries=2, gpus=4, cpus=16)
    assert (four.backend, four.jobs, four.slots) == ("loky", 4, ("cuda:0", "cuda:1", "cuda:2", "cuda:3"))
    six = local_workers("cuda", 6, "loky", retries=2, gpus=4, cpus=16)
    assert six.slots == ("cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1")
    pinned = local_workers("cuda:1", None, "loky", retries=2, gpus=4, cpus=16)
    assert (pinned.backend, pinned.device, pinned.slots) == ("inline", "cuda:1", ())
    cpu = local_workers("cpu", 4, "loky", retries=2, gpus=0, cpus=16)
    assert (cpu.jobs, cpu.threads, cpu.slots) == (4, 4, ())
    assert local_workers("cpu", None, "loky", retries=2, gpus=0, cpus=16).backend == "inline"


def _hold_slot(job, index: int, meeting: str) -> tuple:
    """Hold a slot until another task has started too (workers start at different times)."""
    start = time.time()
    (Path(meeting) / str(index)).touch()
    while len(list(Path(meeting).iterdir())) < 2 and time.time() < start + 60:
        time.sleep(0.05)
    time.sleep(0.3)
    return job.slot, job.device, os.getpid(), start, time.time()


def test_concurrent_tasks_hold_distinct_device_slots(tmp_path):
    """Two worker processes, two stand-in devices: tasks running at the same time never share a slot."""
    from uebench.job import Job
    _fresh_loky_workers()
    job = Job(RunSpec(), None, tmp_path, tmp_path, "cpu", 1, False)
    workers = Workers("loky", 2, "cpu", 1, slots=("cpu", "cpu"))
    (tmp_path / "meeting").mkdir()
    tasks = [Task(_hold_slot, job, (i, str(tmp_path / "meeting")), fallback=str) for i in range(4)]
    got: dict[int, tuple] = {}
    run_tasks(tasks, workers, got.__setitem__)
    assert sorted(got) == [0, 1, 2, 3]
    spans = list(got.values())
    assert {slot for slot, *_ in spans} == {0, 1} and {device for _, device, *_ in spans} == {"cpu"}
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:] if a[3] < b[4] and b[3] < a[4]]
    assert overlapping, "the two workers never ran at the same time; the test saw no concurrency"
    assert all(a[0] != b[0] for a, b in overlapping)


# -- records never corrupt ---------------------------------------------------------------

def _toy_record(**notes) -> Record:
    return Record(status="failed", seed=0, attack=AttackInfo("a", "a"), defense=DefenseInfo("none", "none"),
                  notes=notes)


def _write_many(path: str, writer: int, count: int) -> None:
    for i in range(count):
        write_record(Path(path), _toy_record(writer=writer, i=i, payload="x" * 20_000))


def test_two_writers_racing_on_one_record(tmp_path):
    """Two processes rewrite the same cell; a reader never sees a torn or mixed file."""
    path = tmp_path / "a" / "none" / "seed0.json"
    write_record(path, _toy_record(writer=-1, i=0, payload=""))
    ctx = multiprocessing.get_context("fork")
    writers = [ctx.Process(target=_write_many, args=(str(path), k, 150)) for k in (0, 1)]
    for w in writers:
        w.start()
    reads = []
    while any(w.is_alive() for w in writers):
        reads.append(read_record(path))
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert len(reads) > 10 and all(r is not None for r in reads)
    assert {r.notes["writer"] for r in reads} <= {-1, 0, 1}
    final = read_record(path)
    assert final.notes["i"] == 149 and final.notes["payload"] == "x" * 20_000
    assert [p.name for p in path.parent.iterdir()] == ["seed0.json"]      # no temp file left behind


def test_stale_temp_files_are_ignored_and_cleaned(tmp_path):
    results = tmp_path / "results"
    cell = results / "digits" / "table" / "a" / "none"
    write_record(cell / "seed0.json", _toy_record())
    dead = cell / ".tmp-seed1-k1ll3d.json"            # a writer killed mid-write, an hour ago
    dead.write_text('{"status": "ok", "metr')
    os.utime(dead, (time.time() - 3600,) * 2)
    live = cell / ".tmp-seed2-wr1t1ng.json"           # a writer still at work
    live.write_text('{"sta')
    cache_dead = results / ".cache" / "poisons" / ".em-0123.pt.x1y2.tmp"
    cache_dead.parent.mkdir(parents=True)
    cache_dead.write_bytes(b"\0" * 10)
    os.utime(cache_dead, (time.time() - 3600,) * 2)
    assert [p.name for p, _ in iter_records(results)] == ["seed0.json"]
    assert remove_stale_temp_files([cell, cache_dead.parent, results / "no-such-folder"]) == 2
    assert not dead.exists() and not cache_dead.exists() and live.exists()


# -- a dead worker is retried, then recorded ---------------------------------------------

@pytest.mark.slow   # minutes: real worker processes / a real Ray instance
def test_worker_killed_by_a_plugin_is_retried_then_recorded_as_failed(tmp_path, plugin):
    path, log = plugin
    records = run(RunSpec(attacks="scale-shift", defenses="scale-fragile", preset="smoke",
                          overrides=SMALL, results_dir=tmp_path / "results", progress=False,
                          plugins=[str(path)], device="cpu", jobs=2, retries=1))
    by_cell = {(r.attack.name, r.defense.name): r for r in records}
    assert len(records) == 4 and len(by_cell) == 4                 # each cell delivered once
    doomed = by_cell[("clean", "scale-fragile")]
    assert doomed.status == "failed"
    assert "worker died 2 times" in doomed.error and "TerminatedWorkerError" in doomed.error
    assert _fits(log).count("fit clean/scale-fragile/seed0") == 2    # one run plus one retry
    assert all(r.status == "ok" for key, r in by_cell.items() if key != ("clean", "scale-fragile"))
    on_disk = {(r.attack.name, r.defense.name): r.status
               for _, r in iter_records(tmp_path / "results")}
    assert on_disk == {key: r.status for key, r in by_cell.items()}


# -- a killed driver loses nothing -------------------------------------------------------

def _command(root: Path, plugin: Path) -> list[str]:
    return [sys.executable, "-m", "uebench.cli", "run", "--preset", "smoke", "--epochs", "1",
            "--n-protected", "128", "--n-reference", "64", "--test-subset", "100",
            "--attacks", "scale-shift", "--defenses", "scale-ticking", "--device", "cpu", "--jobs", "1",
            "--plugin", str(plugin), "--results-dir", str(root / "results"),
            "--leaderboard", str(root / "board" / "LEADERBOARD.md"), "--quiet"]


def _finished(results: Path) -> set[str]:
    return {"/".join(p.parts[-3:-1] + (p.stem,)) for p, r in iter_records(results)
            if isinstance(r, Record) and r.status == "ok"}


@pytest.mark.slow   # minutes: real worker processes / a real Ray instance
def test_driver_killed_mid_grid_resumes_to_the_same_table(tmp_path, plugin, monkeypatch):
    path, _ = plugin
    killed, calm = tmp_path / "killed", tmp_path / "calm"
    monkeypatch.setenv("UEBENCH_SCALE_LOG", str(tmp_path / "first.log"))
    proc = subprocess.Popen(_command(killed, path), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while len(_finished(killed / "results")) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = _finished(killed / "results")
    assert 2 <= len(done_at_kill) < 4, "the run finished before it could be killed"

    # ...and a finished record is truncated, a killed writer's temp file is left behind.
    table = next(iter_records(killed / "results"))[0].parents[2]
    truncated = sorted(done_at_kill)[0]
    victim = table / f"{truncated}.json"
    victim.write_text(victim.read_text()[:80])
    stale = victim.parent / ".tmp-seed0-k1ll3d.json"
    stale.write_text('{"status": "ok", "me')
    os.utime(stale, (time.time() - 3600,) * 2)

    monkeypatch.setenv("UEBENCH_SCALE_LOG", str(tmp_path / "resume.log"))
    resumed = subprocess.run(_command(killed, path), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    redo = 4 - len(done_at_kill) + 1
    assert f"4 cells, {redo} to run, {4 - redo} already finished" in resumed.stderr
    all_cells = {f"{a}/{d}/seed0" for a in ("clean", "scale-shift") for d in ("none", "scale-ticking")}
    redone_fits = {line.split()[1] for line in _fits(tmp_path / "resume.log")}
    assert redone_fits == {c for c in all_cells - (done_at_kill - {truncated}) if "/scale-ticking/" in c}
    assert not stale.exists()

    monkeypatch.setenv("UEBENCH_SCALE_LOG", str(tmp_path / "calm.log"))
    uninterrupted = subprocess.run(_command(calm, path), capture_output=True, text=True, timeout=300)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    board = (killed / "board" / "LEADERBOARD.md").read_text()
    assert "| scale-shift |" in board and "Unreadable" not in board
    # the same table; each header names its own records folder
    assert board.replace(str(killed), str(calm)) == (calm / "board" / "LEADERBOARD.md").read_text()


# -- Ray ---------------------------------------------------------------------------------

@pytest.mark.slow   # minutes: real worker processes / a real Ray instance
def test_ray_backend_gives_the_records_of_the_local_backend(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="the Ray backend needs the optional extra: pip install -e '.[ray]'")
    spec = dict(attacks="random-noise,classwise-noise", defenses="none", preset="smoke", overrides=SMALL,
                seeds=[0], progress=False, device="cpu")
    monkeypatch.chdir(tmp_path)                              # relative results folders, as users give them
    local = run(RunSpec(**spec, results_dir=Path("local")))
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        remote = run(RunSpec(**spec, results_dir=Path("ray"), backend="ray"))
        assert ray.is_initialized()          # a cluster the caller started is left running
    finally:
        ray.shutdown()

    def outcome(records):
        return {(r.attack.name, r.defense.name, r.seed): (r.status, r.metrics, r.budget)
                for r in records}
    assert len(remote) == 3 and outcome(remote) == outcome(local)
    assert all(r.status == "ok" for r in remote)
    assert {p.relative_to(tmp_path / "ray").as_posix() for p, _ in iter_records(tmp_path / "ray")} == \
           {p.relative_to(tmp_path / "local").as_posix() for p, _ in iter_records(tmp_path / "local")}


def test_ray_backend_without_ray_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)          # as if the extra were not installed
    code = main(["run", "--preset", "smoke", "--attacks", "random-noise", "--defenses", "none",
                 "--backend", "ray", "--results-dir", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("uebench: error:")
    assert "pip install 'uebench[ray]'" in err[0]
    assert not (tmp_path / "r").exists()                   # refused before planning


@pytest.mark.parametrize("argv, message", [
    (["--retries", "-1"], "--retries must be >= 0"),
    (["--backend", "dask"], "unknown --backend 'dask'"),
    (["--ray-address", "auto"], "--ray-address needs --backend ray"),
])
def test_bad_worker_flags_fail_before_planning(capsys, tmp_path, argv, message):
    code = main(["run", "--preset", "smoke", *argv, "--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "r").exists()
