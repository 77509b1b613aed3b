"""Every CUDA path, at smoke scale (marked ``cuda``; skipped with the reason where no GPU is visible).

Run on a GPU machine by ``scripts/device_check.py`` (``python -m pytest -m cuda``). What is and
is not bit-identical on CUDA: a cell at a fixed seed repeats exactly in one process when cuDNN
picks the same kernels (``cudnn.benchmark`` is off, uebench's default); ``index_add_`` and the
scatter kernels some methods use sum in an unspecified order, so a repeat may differ in the last
bits of a float. The determinism test below requires the same test accuracy from two runs of
one cell, and the two-worker test the same table from one and from two processes.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import tiny_images
from test_attack_contract import DATASETS, N_IMAGES, SETUP
from test_defense_contract import N_CLASSES, tiny_set
from uebench.budget import check_budget, declared_threat_model
from uebench.context import Context
from uebench.plan import RunSpec
from uebench.registry import ATTACKS, DEFENSES, PluginError
from uebench.runner import run
from uebench.train import TrainConfig, accuracy, train_supervised

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA GPU (scripts/device_check.py runs these on one)")]

CUDA = torch.device("cuda")
SMALL = {"epochs": 1, "n_protected": 128, "n_reference": 64, "test_subset": 100}


def cuda_context(tmp_path: Path, channels: int = 3, size: int = 16, classes: int = 4) -> Context:
    ctx = Context(device=CUDA, seed=0, num_classes=classes, image_shape=(channels, size, size),
                  model="smallcnn", train=TrainConfig(epochs=2, batch_size=32), dataset={"name": "tiny"},
                  cache_dir=tmp_path / "cache", artifact_dir=tmp_path / "artifacts", progress=False)
    ctx.train_indices = torch.arange(N_IMAGES)
    return ctx


def loaded(registry, name: str) -> type:
    try:
        return registry.get(name)
    except PluginError as err:
        pytest.skip(str(err))


@pytest.mark.parametrize("name", ATTACKS.names())
def test_an_attack_generates_on_the_gpu_within_its_budget(name, tmp_path):
    cls = loaded(ATTACKS, name)
    data = DATASETS["rgb16"]
    x, y = tiny_images(N_IMAGES, **data)
    params = SETUP[name](tmp_path, x) if name in SETUP else {}
    attack = cls.for_preset("smoke", **params)
    torch.cuda.reset_peak_memory_stats()
    out = attack(x, y, cuda_context(tmp_path, data["channels"], data["size"], data["classes"]))
    # the runner stores poisons on the CPU as float32 whatever the device did the work
    assert out.device.type == "cpu" and out.dtype == torch.float32 and out.shape == x.shape
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    check_budget(x, out, declared_threat_model(attack, x.shape[1:]))
    model_free = name in ("random-noise", "classwise-noise", "lsp", "ar", "ops", "external")
    assert model_free or torch.cuda.max_memory_allocated() > 0, f"{name} did its work on the CPU"


@pytest.mark.parametrize("name", DEFENSES.names())
def test_a_defense_trains_on_the_gpu(name, tmp_path):
    cls = loaded(DEFENSES, name)
    x, y = tiny_set(seed=0)
    reference = tiny_set(seed=1)
    ctx = cuda_context(tmp_path, classes=N_CLASSES)
    defense = cls.for_preset("smoke")
    defense.prepare(reference, ctx)
    torch.manual_seed(0)
    model = defense.fit(x, y, reference, ctx)
    assert next(model.parameters()).device.type == "cuda" and not model.training
    with torch.no_grad():
        logits = model(x[:64].to(CUDA))
    assert torch.isfinite(logits).all()
    x_test = defense.transform_test(x[:16].to(CUDA))
    assert x_test.device.type == "cuda" and x_test.dtype == torch.float32
    assert accuracy(model, x, y) > 1 / N_CLASSES + 0.1, f"{name} trained to chance on the GPU"


def test_training_and_evaluation_run_in_bf16_autocast(tmp_path):
    x, y = tiny_set(seed=0)
    seen = []
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.LazyLinear(N_CLASSES))
    model[0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    model(x[:2])                      # materialise the lazy layer on the CPU
    model = train_supervised(model, x, y, TrainConfig(epochs=2, batch_size=64, amp=True), CUDA, seed=0)
    assert seen[-1] == torch.bfloat16 and next(model.parameters()).dtype == torch.float32
    seen.clear()
    assert 0 <= accuracy(model, x, y) <= 1 and seen[-1] == torch.bfloat16


def test_a_diffusion_purification_cell_runs_on_the_gpu(tmp_path):
    spec = RunSpec(attacks="classwise-noise", defenses="le", preset="smoke", device="cuda", overrides=SMALL,
                   results_dir=tmp_path / "results", progress=False)
    records = {(r.attack.name, r.defense.name): r for r in run(spec)}
    assert records["classwise-noise", "le"].status == "ok", records["classwise-noise", "le"].error
    assert {r.device for r in records.values()} == {"cuda"}


def test_one_and_two_workers_on_the_gpus_give_the_same_table(tmp_path):
    """Two worker processes share the one GPU where only one exists (each task holds a slot)."""
    tables = []
    for jobs in (1, 2):
        spec = RunSpec(attacks="classwise-noise,em", defenses="iss-gray", preset="smoke", device="cuda",
                       overrides=SMALL, jobs=jobs, results_dir=tmp_path / f"jobs{jobs}", progress=False)
        records = run(spec)
        assert all(r.status == "ok" for r in records), [r.error for r in records if r.status != "ok"]
        tables.append({(r.attack.name, r.defense.name): r.metrics.test_acc for r in records})
    assert tables[0] == tables[1]


def test_a_cell_repeats_at_a_fixed_seed_on_the_gpu(tmp_path):
    results = []
    for attempt in range(2):
        spec = RunSpec(attacks="em", defenses="none", preset="smoke", device="cuda", overrides=SMALL, force=True,
                       results_dir=tmp_path / "results", progress=False)
        results.append({(r.attack.name, r.defense.name): r.metrics.test_acc for r in run(spec)})
    assert results[0] == results[1]


def test_a_compiled_victim_trains_and_evaluates_as_the_eager_one_does():
    x, y = tiny_set(seed=0)
    cfg = TrainConfig(epochs=2, batch_size=64, compile=True)
    model = train_supervised(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                                 torch.nn.Linear(8 * 14 * 14, N_CLASSES)), x, y, cfg, CUDA, seed=0)
    assert accuracy(model, x, y) > 1 / N_CLASSES + 0.1
