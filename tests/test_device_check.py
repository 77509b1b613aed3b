"""The prepared device check runs end to end on CPU at smoke scale (slow: about two minutes).

The same script runs on the GPU machine (scripts/device-check.sh); this dry run keeps it from
rotting between the rare sessions that have one: every step runs, the output folder holds the
files the device tool can bring back (at most 8, no subfolder), and the records are real.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_the_device_check_dry_run_fills_its_output_folder(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "scripts/device_check.py", "--dry-run", "--out", str(out)], cwd=ROOT,
                          env={**__import__("os").environ, "UEBENCH_CHECK_WORK": str(tmp_path / "work")},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all((out / f).is_file() for f in files)
    assert {"env.json", "log.txt", "benchmarks.json", "results.tar.gz", "LEADERBOARD.md"} <= set(files)
    assert json.loads((out / "env.json").read_text())["dry_run"] is True
    throughputs = {b["extra_info"]["throughput"] for b in json.loads((out / "benchmarks.json").read_text())["benchmarks"]}
    assert {"train-smallcnn", "train-resnet18", "pgd-smallcnn", "pgd-resnet18", "em-craft", "tap-craft", "le-purify"} <= throughputs
    with tarfile.open(out / "results.tar.gz") as archive:
        names = [m.name for m in archive.getmembers()]
        records = [json.load(archive.extractfile(m)) for m in archive.getmembers()]
    cells = {(n.split("/")[-3], n.split("/")[-2]) for n in names}
    assert {("clean", "none"), ("em", "none"), ("tap", "iss-gray"), ("ops", "iss-jpeg"), ("em", "le")} <= cells
    assert all(r["status"] == "ok" and r["table"]["preset"] == "smoke" for r in records)
    assert "| em " in (out / "LEADERBOARD.md").read_text()
