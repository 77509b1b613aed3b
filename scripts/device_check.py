"""The prepared device check: on a CUDA machine, test every CUDA path, measure throughputs,
and fill as many cells of the `gpu` table as fit in the time given, into one output folder.

    python scripts/device_check.py --out "$OUT"                 # on the GPU machine (see scripts/device-check.sh)
    python scripts/device_check.py --out /tmp/check --dry-run   # on CPU at smoke scale (.ci/run does this)

Steps, each with its own time limit so that the whole stays inside one device call:
  1. the environment (torch, CUDA, the GPU) -> env.json
  2. the `cuda` tests (tests/test_cuda.py)                      -> cuda-tests.txt
  3. the device throughput benchmarks (tests/benchmarks/test_bench_device.py) -> benchmarks.json
  4. cells of the `gpu` table, most informative first (every attack under no defense, then
     grayscale, JPEG, then LE), each column one `uebench run` that is stopped at the deadline;
     records are written atomically, so every finished cell is kept -> results.tar.gz
  5. the leaderboard of those records and the run's log         -> LEADERBOARD.md, log.txt
The output folder gets at most 8 files, none in a subfolder. Nothing is downloaded: the data
is an npz (``--dataset``) and the packages travel as wheels (scripts/device-check.sh).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ["em", "tap", "classwise-noise", "ops"]          # plus the clean row, always
COLUMNS = ["none", "iss-gray", "iss-jpeg", "le"]          # in this order: the cheap columns first
OUTPUTS = ("env.json", "log.txt", "cuda-tests.txt", "benchmarks.json", "results.tar.gz", "LEADERBOARD.md")


class Log:
    """Everything the check prints, also kept in OUT/log.txt."""

    def __init__(self, path: Path):
        self.file = path.open("a")

    def __call__(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


def run_step(command: list[str], log: Log, timeout: float, output: Path | None = None,
             env: dict | None = None) -> int | None:
    """Run ``command`` for at most ``timeout`` seconds; its output goes to ``output`` (or the log).
    Returns its exit code, or None when it was stopped at the deadline."""
    if timeout <= 5:
        log(f"skipped (no time left): {' '.join(command)}")
        return None
    log(f"$ {' '.join(command)}   (at most {timeout:.0f} s)")
    target = output.open("a") if output else log.file
    start = time.monotonic()
    # a new session, so that the deadline stops the command's workers too
    process = subprocess.Popen(command, cwd=ROOT, stdout=target, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
        code = None
    log(f"  -> {'stopped at the deadline' if code is None else f'exit {code}'} after {time.monotonic() - start:.0f} s")
    if output:
        target.close()
    return code


def environment(dry_run: bool) -> dict:
    import torch
    facts = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
             "cuda_available": torch.cuda.is_available(), "dry_run": dry_run, "host_cpus": os.cpu_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts |= {"gpu": props.name, "gpu_count": torch.cuda.device_count(),
                  "gpu_memory_gib": round(props.total_memory / 2**30, 1), "capability": f"{props.major}.{props.minor}"}
    for name in ("diffusers", "kornia", "lpips", "pandas", "joblib"):
        try:
            facts[name] = __import__(name).__version__
        except Exception as err:       # report, do not stop: the steps that need it will say more
            facts[name] = f"missing ({type(err).__name__})"
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "device-check-out")))
    parser.add_argument("--dataset", default="npz:.device-data/cifar10_subset.npz")
    parser.add_argument("--budget-s", type=float, default=540, help="the whole check, in seconds (default 9 min)")
    parser.add_argument("--cells-s", type=float, default=360, help="of which the cells, at most (default 6 min)")
    parser.add_argument("--dry-run", action="store_true",
                        help="on CPU at smoke scale (digits): checks the script, not the GPU")
    args = parser.parse_args(argv)

    start = time.monotonic()
    deadline = start + args.budget_s - 30           # 30 s for the leaderboard and the archive
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("UEBENCH_CHECK_WORK", "/tmp/uebench-device-check")).resolve()
    results = work / "results"
    results.mkdir(parents=True, exist_ok=True)
    log = Log(out / "log.txt")
    python = sys.executable

    facts = environment(args.dry_run)
    (out / "env.json").write_text(json.dumps(facts, indent=1) + "\n")
    log(f"environment: {facts}")
    if not facts["cuda_available"] and not args.dry_run:
        log("no CUDA GPU is visible: nothing to check (use --dry-run to check the script on CPU)")
        return 2

    def left(cap: float) -> float:
        return min(cap, deadline - time.monotonic())

    # 2. the cuda tests
    run_step([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests/test_cuda.py"], log,
             left(40 if args.dry_run else 150), output=out / "cuda-tests.txt")

    # 3. throughputs on this device (the cost model reads them: uebench plan --throughputs)
    run_step([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "benchmark", "--benchmark-enable",
              "tests/benchmarks/test_bench_device.py", f"--benchmark-json={out / 'benchmarks.json'}"],
             log, left(150 if args.dry_run else 90))

    # 4. the gpu table's cells, most informative first; each column stops at the deadline
    cells_deadline = min(deadline, time.monotonic() + args.cells_s)
    preset, dataset = ("smoke", "digits") if args.dry_run else ("gpu", args.dataset)
    common = [python, "-m", "uebench.cli", "run", "--preset", preset, "--dataset", dataset, "--seeds", "0",
              "--results-dir", str(results), "--no-leaderboard", "--quiet", "--device", "auto"]
    if args.dry_run:
        common += ["--epochs", "1", "--n-protected", "128", "--n-reference", "64", "--test-subset", "100"]
    for column in COLUMNS:
        run_step(common + ["--attacks", ",".join(ATTACKS), "--defenses", column], log,
                 cells_deadline - time.monotonic())

    # 5. what came of it
    board = out / "LEADERBOARD.md"
    run_step([python, "-m", "uebench.cli", "leaderboard", "--results-dir", str(results), "--out", str(board)],
             log, 60)
    records = sorted(results.glob("*/*/*/*/seed*.json"))
    with tarfile.open(out / "results.tar.gz", "w:gz") as archive:
        for record in records:
            archive.add(record, arcname=record.relative_to(results).as_posix())
    log(f"{len(records)} record(s) in results.tar.gz; {time.monotonic() - start:.0f} s in all")
    stray = sorted(p.name for p in out.iterdir() if p.name not in OUTPUTS)
    if stray:
        log(f"unexpected files in the output folder: {stray}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
