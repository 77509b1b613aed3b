"""Issue 17, "no silently wrong number": what the other test files do not cover (code
fingerprints in every cache key, warnings on implausible input, workers that die with their
driver, claims that split one grid between concurrent runs)."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch


def _module_from(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# -- every cache key carries the fingerprint of the code that made the entry ------------------

def test_code_fingerprint_follows_the_source_file(tmp_path, monkeypatch):
    from uebench.context import code_fingerprint
    source = tmp_path / "some_method.py"
    source.write_text("def make():\n    return 1\n")
    before = code_fingerprint(_module_from(source, "some_method").make)
    source.write_text("def make():\n    return 2\n")
    after = code_fingerprint(_module_from(source, "some_method").make)
    assert before != after
    monkeypatch.setattr("uebench.__version__", "9.9.9")
    assert code_fingerprint(_module_from(source, "some_method").make) != after
    monkeypatch.delitem(sys.modules, "some_method")


def test_a_method_fingerprint_follows_the_method_it_inherits_from(tmp_path, monkeypatch):
    """SEM subclasses REM in another module: an edit of REM's module must make SEM's records stale
    (before, a method's fingerprint hashed its own module only). The core module it inherits
    ``Attack`` from does not count, so a plain method keeps its module's fingerprint."""
    from uebench.storage import code_fingerprint, method_fingerprint
    monkeypatch.syspath_prepend(str(tmp_path))
    base = tmp_path / "base_method.py"
    (tmp_path / "sub_method.py").write_text("from base_method import Base\nclass Sub(Base):\n    pass\n")
    fingerprints = []
    for value in (1, 2):
        base.write_text(f"from uebench.api import Attack\nclass Base(Attack):\n    value = {value}\n")
        for name in ("base_method", "sub_method"):
            monkeypatch.delitem(sys.modules, name, raising=False)
        base_cls = _module_from(base, "base_method").Base
        sub = _module_from(tmp_path / "sub_method.py", "sub_method").Sub
        assert method_fingerprint(base_cls) == code_fingerprint(base_cls)
        fingerprints.append(method_fingerprint(sub))
    assert fingerprints[0] != fingerprints[1]
    for name in ("base_method", "sub_method"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_shared_caches_are_keyed_by_code(ctx, monkeypatch):
    """ctx.cached (surrogates, UCL, the perceptual network) and the diffusion models."""
    from uebench import context
    from uebench.toolkit import diffusion, sampling
    diffusion_code = context.code_fingerprint(diffusion.train_diffusion)
    built = []
    build = lambda: built.append(1) or len(built)       # noqa: E731
    assert ctx.cached({"what": "x"}, build) == 1 and ctx.cached({"what": "x"}, build) == 1
    monkeypatch.setattr(context, "code_fingerprint", lambda *objects: "edited")
    assert ctx.cached({"what": "x"}, build) == 2                 # other code: built again

    keys = []

    class Seen(Exception):
        pass

    def capture(key):
        keys.append(key)
        raise Seen

    monkeypatch.setattr(sampling, "content_key", capture)
    with pytest.raises(Seen):
        sampling.diffusion_model((torch.rand(4, 3, 16, 16), torch.zeros(4)), "tiny", ctx)
    assert keys[0]["code"] == diffusion_code


# -- implausible input is said, in the output and in the records --------------------------------

def _cli(capsys, *argv):
    from uebench.cli import main
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_a_budget_far_above_the_norms_and_a_poison_that_changes_nothing_are_warned(tmp_path, capsys):
    from uebench.records import iter_records
    base = ["run", "--preset", "smoke", "--epochs", "1", "--attacks", "random-noise", "--defenses", "none",
            "--device", "cpu", "--quiet"]
    code, err = _cli(capsys, *base, "-A", "random-noise.eps=1", "--results-dir", str(tmp_path / "big"))
    assert code == 0
    assert "warning: attack random-noise@" in err and "budget L∞ 255/255 is far above the field's norms" in err
    warned = {p.parts[-3]: r.warnings for p, r in iter_records(tmp_path / "big")}
    assert warned["clean"] == [] and "L∞ 255/255" in next(w for k, ws in warned.items() if k != "clean" for w in ws)

    code, err = _cli(capsys, *base, "-A", "random-noise.eps=0", "--results-dir", str(tmp_path / "zero"))
    assert code == 0 and "the poison of random-noise equals the clean images (L∞ 0)" in err
    warned = [r.warnings for p, r in iter_records(tmp_path / "zero") if p.parts[-3] != "clean"]
    assert warned == [["the poison of random-noise equals the clean images (L∞ 0): this row measures clean data"]]

    code, err = _cli(capsys, *base, "--results-dir", str(tmp_path / "usual"))
    assert code == 0 and "warning" not in err


# -- workers die with their driver -------------------------------------------------------------

def _children(pid: int) -> set[int]:
    """The live descendants of ``pid`` (Linux /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds worker processes through Linux /proc")
def test_killing_the_driver_kills_its_workers(tmp_path):
    """SIGKILL a driver running two loky workers: within seconds no worker is left."""
    driver = subprocess.Popen(
        [sys.executable, "-m", "uebench.cli", "run", "--preset", "smoke", "--epochs", "60", "--jobs", "2",
         "--attacks", "random-noise,classwise-noise", "--defenses", "none,iss-gray", "--device", "cpu",
         "--results-dir", str(tmp_path / "results"), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while len(_children(driver.pid)) < 2 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(3)                                    # the workers are in their first tasks
        workers = _children(driver.pid)
        assert len(workers) >= 2 and driver.poll() is None, "the driver finished before it could be killed"
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    survivors = [pid for pid in workers if _alive(pid)]
    for pid in survivors:                                # leave no orphan behind, even on failure
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"{len(survivors)} of {len(workers)} worker processes outlived their driver"


# -- concurrent runs on one results folder split the work ----------------------------------------

SLOW_DEFENSE = '''
import os, time
from dataclasses import dataclass
from uebench import Defense, register_defense

@register_defense
@dataclass
class SlowLogged(Defense):
    """Standard training after a pause; logs who fitted which cell."""
    name = "slow-logged"
    paper = "test"

    def fit(self, x, y, reference, ctx):
        with open(os.environ["UEBENCH_TEST_LOG"], "a") as f:
            f.write(f"{os.getpid()} seed{ctx.seed} {float(x.sum()):.2f}\\n")
        time.sleep(0.5)
        return super().fit(x, y, reference, ctx)
'''


def test_two_runs_on_one_folder_split_the_grid(tmp_path):
    plugin, log = tmp_path / "slow_plugin.py", tmp_path / "fits.log"
    plugin.write_text(SLOW_DEFENSE)
    command = [sys.executable, "-m", "uebench.cli", "run", "--preset", "smoke", "--epochs", "1", "--seeds", "0-1",
               "--n-protected", "128", "--n-reference", "64", "--test-subset", "100", "--attacks", "random-noise,classwise-noise", "--defenses", "slow-logged", "--device", "cpu",
               "--plugin", str(plugin), "--results-dir", str(tmp_path / "results"), "--quiet"]
    env = {**os.environ, "UEBENCH_TEST_LOG": str(log), "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [run.communicate(timeout=300)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors
    fits = [line.split() for line in log.read_text().splitlines()]
    cells = [(seed, total) for _, seed, total in fits]
    assert len(cells) == 6 and len(set(cells)) == 6                 # 3 rows x 2 seeds, each fitted once
    assert len({pid for pid, _, _ in fits}) == 2                     # by both runs
    records = list((tmp_path / "results").rglob("seed*.json"))
    assert len(records) == 12 and not list((tmp_path / "results").rglob(".*.claim"))


def _one_cell_spec(tmp_path):
    from uebench.plan import RunSpec
    return RunSpec(attacks="random-noise", defenses="none", preset="smoke", overrides={"epochs": 1},
                   results_dir=tmp_path / "results", progress=False, device="cpu")


def test_a_claim_whose_holder_died_is_taken_over_and_a_live_one_waited_for(tmp_path):
    import json
    import socket
    import threading

    from uebench.claims import claim_path
    from uebench.plan import make_plan
    from uebench.runner import run
    spec = _one_cell_spec(tmp_path)
    plan = make_plan(spec)
    def claim(record, pid):
        claim_path(record).parent.mkdir(parents=True, exist_ok=True)
        claim_path(record).write_text(json.dumps({"host": socket.gethostname(), "pid": pid}))

    clean_cell, attacked_cell = (c.path(plan.table_dir) for c in plan.cells)
    dead = subprocess.Popen(["true"])
    dead.wait()
    claim(clean_cell, dead.pid)                                  # its holder died
    sleeper = subprocess.Popen(["sleep", "3"])                   # a live holder of the other cell
    threading.Thread(target=sleeper.wait, daemon=True).start()   # reaped when it ends
    claim(attacked_cell, sleeper.pid)
    start = time.monotonic()
    records = run(spec)
    assert sorted(r.attack.name for r in records) == ["clean", "random-noise"]
    assert all(r.status == "ok" for r in records)
    assert time.monotonic() - start >= 2.5                      # it waited for the live holder
    assert not claim_path(clean_cell).exists() and not claim_path(attacked_cell).exists()


def test_a_claim_is_exclusive_until_released(tmp_path):
    from uebench.claims import Claim, holder_of
    target = tmp_path / "cell" / "seed0.json"
    first, second = Claim(target), Claim(target)
    assert first.acquire() is None
    assert second.acquire() == {"host": first.owner["host"], "pid": os.getpid()}
    assert holder_of(first.path) == first.owner
    first.release()
    assert holder_of(first.path) is None and second.acquire() is None
    second.release()
    assert not first.path.exists()


# -- fault injection: kills at random points never change the table --------------------------------

def test_random_kills_of_workers_and_driver_leave_the_table_of_an_uninterrupted_run(tmp_path):
    """Kill the driver or one of its workers at a random moment, resume, again and again (a few
    rounds, bounded by UEBENCH_FAULT_ROUNDS); the finished table equals an uninterrupted one and
    no worker outlives its driver."""
    import random

    from uebench.records import iter_records
    rounds = int(os.environ.get("UEBENCH_FAULT_ROUNDS", "3"))
    rng = random.Random(17)

    def command(results):
        return [sys.executable, "-m", "uebench.cli", "run", "--preset", "smoke", "--epochs", "2", "--jobs", "2",
                "--n-protected", "128", "--n-reference", "64", "--test-subset", "100", "--device", "cpu",
                "--attacks", "random-noise,classwise-noise", "--defenses", "none,iss-gray",
                "--results-dir", str(results), "--quiet"]

    def table(results):
        return {p.relative_to(results).as_posix(): (r.status, r.test_acc)
                for p, r in iter_records(results)}

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert subprocess.run(command(tmp_path / "whole"), env=env, capture_output=True).returncode == 0
    kills = []
    for round_ in range(rounds):
        driver = subprocess.Popen(command(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 6.0))
        workers = sorted(_children(driver.pid))
        victim = driver.pid if round_ % 2 == 0 or not workers else rng.choice(workers)   # driver, worker, ...
        if driver.poll() is None:
            os.kill(victim, signal.SIGKILL)
            kills.append("driver" if victim == driver.pid else "worker")
        if victim == driver.pid:
            driver.wait()
            time.sleep(3)                                          # the workers notice and exit
            assert not [pid for pid in workers if _alive(pid)], "a worker outlived its driver"
        else:
            assert driver.wait(timeout=300) in (0, 1)              # a worker's death: the driver goes on
    final = subprocess.run(command(tmp_path / "killed"), env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert "driver" in kills, f"no driver was killed mid-run ({kills}): every round finished first"
    assert table(tmp_path / "killed") == table(tmp_path / "whole")
    assert len(table(tmp_path / "whole")) == 6


# -- one table however the grid is scheduled ----------------------------------------------------

@pytest.mark.slow   # two smoke grids of 15 cells, one in the driver and one in two worker processes
def test_a_table_is_the_same_in_the_driver_and_in_two_workers(tmp_path):
    """CPU float sums depend on the thread count; the smoke preset fixes it per cell (1), so
    the driver (which would take both cores) and ``--jobs 2`` (one core each) agree."""
    from uebench.records import iter_records
    grid = ["--preset", "smoke", "--attacks", "random-noise,classwise-noise,em,tap",
            "--defenses", "none,iss-gray,cutout", "--quiet", "--no-leaderboard"]
    tables = []
    for name, jobs in (("inline", "1"), ("workers", "2")):
        done = subprocess.run([sys.executable, "-m", "uebench.cli", "run", *grid, "--jobs", jobs,
                               "--results-dir", str(tmp_path / name)], capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr
        records = {p.relative_to(tmp_path / name).as_posix(): r for p, r in iter_records(tmp_path / name)}
        assert len(records) == 15 and all(r.threads == 1 for r in records.values())
        tables.append({path: r.metrics for path, r in records.items()})
    assert tables[0] == tables[1]
