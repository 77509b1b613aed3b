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


def test_shared_caches_are_keyed_by_code(ctx, monkeypatch):
    """ctx.cached (surrogates, UCL, the perceptual network) and the diffusion models."""
    from uebench import context, diffusion
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

    monkeypatch.setattr(diffusion, "content_key", capture)
    with pytest.raises(Seen):
        diffusion.diffusion_model((torch.rand(4, 3, 16, 16), torch.zeros(4)), "tiny", ctx)
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
    warned = {p.parts[-3]: r["warnings"] for p, r in iter_records(tmp_path / "big")}
    assert warned["clean"] == [] and "L∞ 255/255" in next(w for k, ws in warned.items() if k != "clean" for w in ws)

    code, err = _cli(capsys, *base, "-A", "random-noise.eps=0", "--results-dir", str(tmp_path / "zero"))
    assert code == 0 and "the poison of random-noise equals the clean images (L∞ 0)" in err
    warned = [r["warnings"] for p, r in iter_records(tmp_path / "zero") if p.parts[-3] != "clean"]
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
