"""The contract every registered attack keeps, checked on tiny data at the smoke preset.

For each attack in the registry (built-ins and installed plugins alike): the poisoned
images have the input's shape, are float32 in [0, 1], respect the threat model the
attack declares (through the budget guard), are the same for the same seed, and, on uint8
images, are uint8 images again (the attack's release rule, ``uebench/release.py``). Run on
16×16 colour uint8 images with 4 classes and on 8×8 grey float images with 3 classes. Attacks that
import files (``external``) are given one written from the clean images.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_images
from uebench.budget import check_budget, declared_threat_model
from uebench.context import Context
from uebench.registry import ATTACKS, PluginError
from uebench.release import FLOAT_UNTIL_RECOMPUTED, on_uint8_grid
from uebench.train import TrainConfig

DATASETS = {"rgb16": dict(channels=3, size=16, classes=4), "grey8": dict(channels=1, size=8, classes=3)}
UINT8 = {"rgb16"}           # snapped to uint8 levels, as every image file is
N_IMAGES = 48


def external_with_file(tmp_path, x):
    """The importer needs a released poison file: write one, within L∞ 8/255 of ``x``."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(-7, 8, x.shape, generator=g)
    poison = ((x * 255).round() + noise).clamp(0, 255).to(torch.uint8)   # ≤ 7.5/255 from x
    path = tmp_path / "released.npz"
    np.savez(path, x_train=poison.permute(0, 2, 3, 1).numpy())
    return {"path": str(path)}


# Hyperparameters an attack needs on top of its smoke preset, built from the clean images.
SETUP = {"external": external_with_file}


def make_context(data: dict, tmp_path) -> Context:
    c, s = data["channels"], data["size"]
    ctx = Context(device=torch.device("cpu"), seed=0, num_classes=data["classes"], image_shape=(c, s, s),
                  model="smallcnn", train=TrainConfig(epochs=2, batch_size=32), dataset={"name": "tiny"},
                  cache_dir=None, artifact_dir=tmp_path / "artifacts", progress=False)
    ctx.train_indices = torch.arange(N_IMAGES)   # as the runner sets it
    return ctx


@pytest.mark.parametrize("data_name", sorted(DATASETS))
@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_contract(name, data_name, tmp_path):
    try:
        cls = ATTACKS.get(name)
    except PluginError as err:
        pytest.skip(f"attack module is broken: {err}")
    data = DATASETS[data_name]
    x, y = tiny_images(N_IMAGES, **data)
    if data_name in UINT8:
        x = (x * 255).round() / 255
    params = SETUP[name](tmp_path, x) if name in SETUP else {}
    attack = cls.for_preset("smoke", **params)
    if getattr(attack, "path", None) == "":
        pytest.skip(f"{name} imports a file and none was given")

    ctx = make_context(data, tmp_path)
    out = attack(x, y, ctx)

    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    # as the runner checks it (uebench/cell.py): an L2 budget allows what the release moves
    check_budget(x, out, declared_threat_model(attack, x.shape[1:]), released=ctx.notes.get("released_as"))
    assert not torch.equal(out, x), f"{name} left every image unchanged"
    if data_name in UINT8 and name not in FLOAT_UNTIL_RECOMPUTED:
        assert on_uint8_grid(out), f"{name} hands over images off the uint8 grid: declare its release rule"
    again = cls.for_preset("smoke", **params)(x, y, make_context(data, tmp_path))
    assert torch.equal(out, again), f"{name} is not deterministic for a fixed seed"
