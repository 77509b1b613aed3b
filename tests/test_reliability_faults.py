"""Issue 29, "reliability, round 3": what a plugin's code can do to a run, and what a run does
when its folder or its backend fails it. Each test failed on the code before the fix.

Plugins here are written into the test's folder and loaded with ``--plugin``, as a user would;
every grid is the smoke preset cut down to seconds.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_reliability import _alive, _children

SMALL = ["--preset", "smoke", "--epochs", "1", "--n-protected", "128", "--n-reference", "64",
         "--test-subset", "100", "--device", "cpu", "--quiet", "--no-leaderboard"]

PLUGIN_HEAD = '''
import gc, os, sys, time
from dataclasses import dataclass
import numpy as np
import torch
from uebench import Attack, Defense, ThreatModel, register_attack, register_defense
'''


def _write(tmp_path: Path, plugin: str) -> Path:
    """The plugin file a test loads with --plugin."""
    path = tmp_path / "hostile_plugin.py"
    path.write_text(PLUGIN_HEAD + plugin)
    return path


def run_cli(tmp_path: Path, *argv: str, plugin: str | None = None, timeout: float = 300,
            jobs: str = "1") -> subprocess.CompletedProcess:
    extra = [] if plugin is None else ["--plugin", str(_write(tmp_path, plugin))]
    return subprocess.run([sys.executable, "-m", "uebench.cli", "run", *SMALL, "--jobs", jobs, *extra,
                           "--results-dir", str(tmp_path / "results"), *argv],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def records(tmp_path: Path) -> dict[tuple[str, str], dict]:
    """{(attack folder, defense folder): record as JSON} of the run's table."""
    out = {}
    for path in (tmp_path / "results").glob("*/*/*/*/seed*.json"):
        out[(path.parent.parent.name, path.parent.name)] = json.loads(path.read_text())
    return out


# -- 3. the test set is out of a defense's reach ---------------------------------------------------

PEEKING_DEFENSE = '''
@register_defense
@dataclass
class Peeking(Defense):
    """Looks through every object alive in its process for the test images, and trains on
    them when it finds them (the attack the issue describes went through uebench.job's cache)."""
    name = "peeking"

    def fit(self, x, y, reference, ctx):
        found = [o for o in gc.get_objects()
                 if getattr(o, "__class__", None).__name__ == "Dataset" and len(getattr(o, "y_test", ())) > 0]
        ctx.notes["datasets_with_test_images"] = len(found)
        if found:
            ds = found[0]
            x = torch.from_numpy(ds.x_test).permute(0, 3, 1, 2).float() / 255
            y = torch.from_numpy(ds.y_test)
        return super().fit(x, y, reference, ctx)
'''


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_no_object_alive_during_a_defense_holds_the_test_set(tmp_path, jobs):
    done = run_cli(tmp_path, "--attacks", "random-noise", "--defenses", "peeking", plugin=PEEKING_DEFENSE, jobs=jobs)
    assert done.returncode == 0, done.stderr
    cells = {k: r for k, r in records(tmp_path).items() if k[1] == "peeking"}
    assert len(cells) == 2 and all(r["status"] == "ok" for r in cells.values())
    assert [r["notes"]["defense"]["datasets_with_test_images"] for r in cells.values()] == [0, 0]
    assert all(r["metrics"]["n_test"] == 100 for r in cells.values())    # evaluated on the whole test split


# -- 4. a defense that changes its input in place ---------------------------------------------------

VANDAL_DEFENSE = '''
@register_defense
@dataclass
class Vandal(Defense):
    """Trains as the default does, then zeroes the images and labels it was handed."""
    name = "vandal"

    def fit(self, x, y, reference, ctx):
        model = super().fit(x, y, reference, ctx)
        x.zero_(); y.zero_(); reference[0].zero_()
        return model
'''


def test_a_defense_that_zeroes_its_input_does_not_change_the_measured_train_accuracy(tmp_path):
    done = run_cli(tmp_path, "--attacks", "classwise-noise", "--defenses", "none,vandal", plugin=VANDAL_DEFENSE)
    assert done.returncode == 0, done.stderr
    cells = records(tmp_path)
    for attack in ("clean", "classwise-noise"):      # the same training as `none`: the same model
        vandal, plain = cells[(attack, "vandal")]["metrics"], cells[(attack, "none")]["metrics"]
        assert vandal["train_acc"] == plain["train_acc"] and vandal["test_acc"] == plain["test_acc"]


# -- 5. the threading backend would not reproduce, so it is refused --------------------------------

def test_the_threading_backend_is_refused_in_one_line_before_anything_is_written(tmp_path):
    done = run_cli(tmp_path, "--attacks", "random-noise", "--defenses", "none", "--backend", "threading",
                   jobs="2")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "uebench: error: --backend threading is not supported: threads share torch's random generator and "
        "thread count, so cells would not reproduce; use loky (the default) or ray"]
    assert not (tmp_path / "results").exists()


# -- 8. a plugin's own exit or interrupt fails its cell, not the grid -----------------------------

QUITTING_METHODS = '''
@register_defense
@dataclass
class Exits(Defense):
    name = "exits"
    def fit(self, x, y, reference, ctx):
        sys.exit(0)

@register_defense
@dataclass
class Interrupts(Defense):
    name = "interrupts"
    def fit(self, x, y, reference, ctx):
        raise KeyboardInterrupt

@register_attack
@dataclass
class ExitingAttack(Attack):
    name = "exiting-attack"
    def threat_model(self):
        return ThreatModel("linf", 8 / 255)
    def generate(self, x, y, ctx):
        sys.exit(3)
'''


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_plugin_that_exits_or_interrupts_fails_only_its_own_cells(tmp_path, jobs):
    grid = ("--attacks", "random-noise,exiting-attack", "--defenses", "exits,interrupts,none")
    for attempt in range(2):     # a rerun too: the failed cells run again, and fail alone again
        done = run_cli(tmp_path, *grid, plugin=QUITTING_METHODS, jobs=jobs)
        assert done.returncode == 1, done.stderr          # failed cells, not a clean exit 0
        cells = records(tmp_path)
        assert len(cells) == 9      # the clean row and two attacks, under none and the two plugins
        assert {k: r["status"] for k, r in cells.items() if r["status"] == "ok"} == \
            {("clean", "none"): "ok", ("random-noise", "none"): "ok"}
        assert "sys.exit(0)" in cells[("clean", "exits")]["error"]
        assert "raised KeyboardInterrupt" in cells[("random-noise", "interrupts")]["error"]
        assert "sys.exit(3)" in cells[("exiting-attack", "none")]["error"]


SLEEPING_DEFENSE = '''
@register_defense
@dataclass
class Sleeps(Defense):
    """Never returns by itself (Python code, so a signal or a time limit can reach it)."""
    name = "sleeps"
    def fit(self, x, y, reference, ctx):
        open(os.environ["UEBENCH_TEST_MARK"], "w").close()
        while True:
            time.sleep(0.1)
'''


def test_a_real_interrupt_still_stops_the_grid(tmp_path):
    plugin = _write(tmp_path, SLEEPING_DEFENSE)
    mark = tmp_path / "fitting"
    driver = subprocess.Popen([sys.executable, "-m", "uebench.cli", "run", *SMALL, "--attacks", "random-noise",
                               "--defenses", "sleeps", "--plugin", str(plugin),
                               "--results-dir", str(tmp_path / "results")],
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "UEBENCH_TEST_MARK": str(mark)})
    deadline = time.monotonic() + 120
    while not mark.exists() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == 130, err
    assert "interrupted" in err
    assert not [k for k in records(tmp_path) if k[1] == "sleeps"]     # no cell was recorded as failed


# -- 11. a per-task time limit frees the claim of a method that never returns ----------------------

@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_cell_over_its_time_limit_fails_and_frees_its_claim(tmp_path, jobs):
    done = subprocess.run(
        [sys.executable, "-m", "uebench.cli", "run", *SMALL, "--jobs", jobs, "--attacks", "random-noise",
         "--defenses", "none,sleeps", "--cell-timeout", "5", "--plugin", str(_write(tmp_path, SLEEPING_DEFENSE)),
         "--results-dir", str(tmp_path / "results")],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "UEBENCH_TEST_MARK": str(tmp_path / "mark")})
    assert done.returncode == 1, done.stderr
    cells = records(tmp_path)
    assert [cells[(a, "none")]["status"] for a in ("clean", "random-noise")] == ["ok", "ok"]
    for attack in ("clean", "random-noise"):
        assert "over the time limit of 5 s (--cell-timeout)" in cells[(attack, "sleeps")]["error"]
    assert not list((tmp_path / "results").rglob("*.claim*"))    # nothing holds a cell any more


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_a_bad_time_limit_is_one_line(tmp_path, value):
    done = run_cli(tmp_path, "--attacks", "random-noise", "--defenses", "none", "--cell-timeout", value)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"uebench: error: --cell-timeout must be a number of seconds > 0, got {float(value)}"]
    assert not (tmp_path / "results").exists()


# -- 9. --jobs is capped at the work and the cores; every worker dies with its driver ------------

@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds worker processes through Linux /proc")
def test_a_thousand_jobs_start_no_more_workers_than_cores_and_none_outlives_sigterm(tmp_path):
    plugin = _write(tmp_path, SLEEPING_DEFENSE)
    mark = tmp_path / "fitting"
    driver = subprocess.Popen([sys.executable, "-m", "uebench.cli", "run", *SMALL, "--jobs", "1000",
                               "--attacks", "random-noise", "--defenses", "sleeps",
                               "--plugin", str(plugin),
                               "--results-dir", str(tmp_path / "results")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "UEBENCH_TEST_MARK": str(mark)})
    try:
        deadline = time.monotonic() + 120
        while not mark.exists() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
        workers = _children(driver.pid)
        loky_workers = [p for p in workers if b"LokyProcess" in Path(f"/proc/{p}/cmdline").read_bytes()]
    finally:
        driver.send_signal(signal.SIGTERM)
        driver.wait()
    # two cells: two workers at most, and never more than the cores (the resource trackers aside)
    assert 0 < len(loky_workers) <= min(2, os.cpu_count() or 1), loky_workers
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    survivors = [pid for pid in workers if _alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"{len(survivors)} of {len(workers)} processes outlived their driver"


def test_local_workers_are_capped_at_the_cores():
    from uebench.workers import local_workers
    assert local_workers("cpu", 1000, "loky", 2, gpus=0, cpus=2).jobs == 2
    assert local_workers("cpu", 1000, "loky", 2, gpus=0, cpus=1).backend == "inline"
    assert local_workers("cuda", 8, "loky", 2, gpus=2, cpus=4).jobs == 4


# -- 10. a results folder that becomes unwritable mid-run --------------------------------------------

BREAKING_DEFENSE = '''
@register_defense
@dataclass
class BreaksResults(Defense):
    """Puts a file where the results folder was (as good as making it read-only, also for root)."""
    name = "breaks-results"
    def fit(self, x, y, reference, ctx):
        root = ctx.artifact_dir.parents[3]
        if not os.path.exists(str(root) + ".moved"):
            os.rename(root, str(root) + ".moved")
            open(root, "w").write("no longer a folder")
        return super().fit(x, y, reference, ctx)
'''


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_results_folder_that_becomes_unwritable_ends_the_run_in_one_line(tmp_path, jobs):
    done = run_cli(tmp_path, "--attacks", "random-noise", "--defenses", "breaks-results,cutout",
                   plugin=BREAKING_DEFENSE, jobs=jobs)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("uebench: error: cannot write to the results folder (") and \
        lines[-1].endswith("make it writable and re-run the same command to resume (finished cells are kept)")
    assert "Traceback" not in done.stderr and "Warning" not in done.stderr


# -- 13. a cold and a warm cache make the same poison ------------------------------------------------

def _poisons(results: Path) -> dict[str, torch.Tensor]:
    return {p.name: torch.load(p, weights_only=False)["x"] for p in (results / ".cache" / "poisons").glob("*.pt")}


@pytest.mark.slow   # two smoke grids of every attack (about 40 s); .ci/run runs it
def test_every_built_in_attack_makes_the_same_poison_with_a_cold_and_a_warm_cache(tmp_path):
    """The second run finds the surrogates and shared patterns the first one built (AAP's
    reference model, TAP's surrogate, UCL's patterns) and remakes the poisons with --force: the
    poisons must not depend on whether a shared model was trained or loaded (AAP's differed by
    16/255 when training it drew from torch's global generator)."""
    grid = ("--attacks", "all", "--defenses", "none", "--seeds", "0")
    done = run_cli(tmp_path, *grid, jobs="2")
    assert done.returncode == 0, done.stderr
    cold = _poisons(tmp_path / "results")
    assert len(cold) >= 16 and list((tmp_path / "results" / ".cache" / "surrogate").glob("*.pt"))
    done = run_cli(tmp_path, *grid, "--force", jobs="2")
    assert done.returncode == 0, done.stderr
    warm = _poisons(tmp_path / "results")
    assert warm.keys() == cold.keys()
    differing = {name: float((warm[name] - cold[name]).abs().max()) for name in cold if not torch.equal(warm[name], cold[name])}
    assert not differing


@pytest.mark.slow   # a grid killed once its shared models are cached, resumed; an uninterrupted one; a --force rerun
def test_a_killed_and_resumed_grid_equals_an_uninterrupted_one_and_a_forced_rerun(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def command(folder: str) -> list[str]:
        return [sys.executable, "-m", "uebench.cli", "run", *SMALL, "--attacks", "aap,tap,em",
                "--defenses", "none,cutout", "--results-dir", str(tmp_path / folder / "results")]

    def table(folder: str) -> tuple[dict, dict]:
        return ({k: r["metrics"] for k, r in records(tmp_path / folder).items()},
                _poisons(tmp_path / folder / "results"))

    driver = subprocess.Popen(command("killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    surrogates = tmp_path / "killed" / "results" / ".cache" / "surrogate"
    deadline = time.monotonic() + 300
    while not list(surrogates.glob("*.pt")) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert driver.returncode == -signal.SIGKILL, "the grid finished before it could be killed"
    for folder, extra in (("killed", []), ("whole", []), ("killed", ["--force"])):
        done = subprocess.run(command(folder) + extra, capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stderr
        if folder == "killed" and not extra:
            resumed = table("killed")
    whole, forced = table("whole"), table("killed")
    assert len(resumed[0]) == 8 and len(resumed[1]) == 3
    for other in (whole, forced):
        assert other[0] == resumed[0]
        assert other[1].keys() == resumed[1].keys()
        assert all(torch.equal(other[1][k], resumed[1][k]) for k in resumed[1])


def test_a_record_removed_while_the_web_page_is_built_is_one_line_and_leaves_the_page_as_it_was(
        tmp_path, monkeypatch, capsys):
    """Another run removes a record between the page reading the records and copying them (the
    removal is made at that moment by wrapping the reader; the copying is the real code)."""
    from uebench import cli, site
    done = run_cli(tmp_path, "--attacks", "classwise-noise", "--defenses", "none")
    assert done.returncode == 0, done.stderr
    results, out = tmp_path / "results", tmp_path / "site"
    assert cli.main(["leaderboard", "--results-dir", str(results), "--html", str(out),
                     "--out", str(tmp_path / "board.md")]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    read = site.collect

    def read_then_lose_one(folder):
        found = read(folder)
        next(results.rglob("seed0.json")).unlink()
        return found

    monkeypatch.setattr(site, "collect", read_then_lose_one)
    capsys.readouterr()
    assert cli.main(["leaderboard", "--results-dir", str(results), "--html", str(out),
                     "--out", str(tmp_path / "board.md")]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "leaderboard written" not in line]
    assert len(err) == 1 and err[0].startswith("uebench: error: ") and "was removed while the web page was built" in err[0]
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
