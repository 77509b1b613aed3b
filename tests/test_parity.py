"""Parity with the official code: golden outputs in ../shared/parity (see its README).

Each golden file was produced by running the official public code on images of the
CIFAR-10 subset. The tests call the methods the way the runner does (``configure`` from
the registry, then the attack's ``__call__`` or the defense's ``purify``), on the same
images, and compare as the README says: exactly, or within the stated tolerance.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from uebench.context import Context
from uebench.data import to_tensor, to_uint8
from uebench.registry import ATTACKS, DEFENSES
from uebench.plan import configure

PARITY = Path(__file__).resolve().parents[1].parent / "shared" / "parity"
SUBSET = PARITY.parent / "data" / "cifar10_subset.npz"


def golden(name: str):
    path = PARITY / name
    if not path.exists():
        pytest.skip(f"needs the golden file {path} (../shared/parity, present on the project's machines)")
    return json.loads(path.read_text()) if path.suffix == ".json" else np.load(path)


def cifar_context(seed: int = 0) -> Context:
    return Context(device=torch.device("cpu"), seed=seed, num_classes=10, image_shape=(3, 32, 32),
                   progress=False, cache_dir=None)


def run_attack(name: str, x_uint8: np.ndarray, y: np.ndarray, ctx: Context, **params) -> np.ndarray:
    """The runner's path: registry → preset → ``Attack.__call__`` on [0, 1] floats; uint8 back."""
    attack = configure(ATTACKS, name, "cpu", params).instance
    return to_uint8(attack(to_tensor(x_uint8), torch.from_numpy(y), ctx))


def run_squeeze(name: str, x_uint8: np.ndarray) -> np.ndarray:
    defense = configure(DEFENSES, name, "cpu", {}).instance
    x = to_tensor(x_uint8)
    return to_uint8(defense.purify(x, torch.zeros(len(x), dtype=torch.long), None, cifar_context()))


# -- OPS ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ops_golden():
    return golden("ops_official.npz")


def test_ops_poisons_exactly_as_the_official_pixel_search(ops_golden):
    g = ops_golden
    ctx = cifar_context()
    with np.load(SUBSET) as data:
        x, y = data["x_train"][g["index"]], data["y_train"][g["index"]]
    np.testing.assert_array_equal(y, g["y"])
    poisoned = run_attack("ops", x, y, ctx)
    pixels = np.array([[row, col] for row, col, _ in ctx.notes["ops_pixels"]])
    colours = np.array([colour for _, _, colour in ctx.notes["ops_pixels"]])
    np.testing.assert_array_equal(pixels, g["positions"])
    np.testing.assert_array_equal(colours, g["colours"])
    np.testing.assert_array_equal(poisoned, g["x_poisoned"])


def test_ops_score_table_matches_the_official_one(ops_golden):
    from uebench.attacks.ops import OPS
    g = ops_golden
    with np.load(SUBSET) as data:
        x, y = to_tensor(data["x_train"][g["index"]]), torch.from_numpy(data["y_train"][g["index"]])
    scores = OPS.scores(x, y, 10)                                        # (K, 2^C, H, W)
    ours = scores.flatten(2).transpose(1, 2).numpy()                     # (K, H·W, 2^C), as the golden
    # float32 pixels (x/255 in float32), float64 statistics: the README's float32 tolerance
    # on the classes' own scores; the golden zeroes pairs taken by an earlier class, we do not
    taken = g["scores"] == 0
    np.testing.assert_allclose(ours[~taken], g["scores"][~taken], rtol=1e-5)


# -- ISS / APBench squeezes ----------------------------------------------------------------

@pytest.mark.parametrize("name, file", [("bdr", "bdr_apbench.npz"), ("iss-gray", "gray_apbench.npz")])
def test_squeeze_equals_apbench_exactly(name, file):
    g = golden(file)
    np.testing.assert_array_equal(run_squeeze(name, g["x_in"]), g["x_out"])


# -- AR ----------------------------------------------------------------------------------

def test_ar_uses_the_published_cifar10_processes():
    from uebench.attacks.ar import official_coefficients
    g = golden("ar_official_cifar10.json")
    expected = np.asarray(g["coefficients"], dtype=np.float64).astype(np.float32)
    np.testing.assert_array_equal(official_coefficients().numpy(), expected)
    ar = configure(ATTACKS, "ar", "cpu", {}).instance
    ctx = cifar_context()
    assert torch.equal(ar.coefficients_for(ctx, 3, (32, 32)), official_coefficients())
    assert ctx.notes["ar_coefficients"].startswith("official")
    published = g["constants"]["published_cifar10_poison"]
    assert (ar.norm, ar.eps, ar.crop) == ("l2", published["eps"], g["constants"]["crop"])


def test_ar_perturbation_of_a_stored_start_equals_the_official_one():
    from uebench.attacks.ar import ar_recursion, official_coefficients
    g = golden("ar_official_samples.npz")
    ar = configure(ATTACKS, "ar", "cpu", {}).instance
    coeffs = official_coefficients()[torch.from_numpy(g["classes"])]
    crop = ar_recursion(coeffs.double(), torch.from_numpy(g["start"]).double())[:, :, ar.crop:, ar.crop:]
    np.testing.assert_allclose(crop.numpy(), g["unscaled_crop"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(crop.flatten(1).norm(dim=1).numpy(), g["generated_norm"], rtol=1e-5)
    delta = ar.scaled(crop)
    np.testing.assert_allclose(delta.numpy(), g["perturbation"], atol=1e-6, rtol=0)
    linf = configure(ATTACKS, "ar", "cpu", {"norm": "linf", "eps": 8 / 255}).instance
    np.testing.assert_allclose(linf.scaled(crop).numpy(), g["perturbation_linf"], atol=1e-6, rtol=0)
    # applied and exported as the official script does (clamp, then trunc(255·x + 0.5))
    x = to_tensor(g["x_clean"])
    poisoned = to_uint8((x + delta.float()).clamp(0, 1)).astype(int)
    assert np.abs(poisoned - g["x_poisoned"].astype(int)).max() <= 1


def test_ar_poison_on_cifar_is_cancelled_by_each_class_filter():
    """End to end on the runner's path: every image's perturbation is annihilated (in the
    interior) by its own class's published filter, and not by another class's."""
    from uebench.attacks.ar import official_coefficients
    if not SUBSET.exists():
        pytest.skip(f"needs the shared CIFAR-10 subset at {SUBSET}")
    with np.load(SUBSET) as data:
        x, y = data["x_train"][:200], data["y_train"][:200]
    ar = configure(ATTACKS, "ar", "cpu", {}).instance
    clean = to_tensor(x)
    # mid-grey images: nothing clips, so the perturbation is exactly the AR noise
    flat = torch.full_like(clean, 0.5)
    delta = ar(flat, torch.from_numpy(y), cifar_context()) - flat
    filters = official_coefficients().clone()
    filters[:, :, -1, -1] = -1
    response = torch.stack([torch.nn.functional.conv2d(delta, filters[k][:, None], groups=3).abs().mean((1, 2, 3))
                            for k in range(10)], dim=1)                  # (N, K)
    own = response[torch.arange(len(y)), torch.from_numpy(y)]
    assert own.max() < 1e-5
    assert (response.sort(dim=1).values[:, 1] > 100 * own.clamp_min(1e-9)).all()
    np.testing.assert_allclose(delta.flatten(1).norm(dim=1).numpy(), 1.0, rtol=1e-4)


# -- the training crop -------------------------------------------------------------------

def test_paper_preset_crops_with_zero_padding_as_apbench():
    """torchvision's RandomCrop(32, padding=4) (APBench, official EM/REM/TAP) pads with zeros."""
    from uebench.presets import table_config
    from uebench.train import random_crop_flip
    assert table_config("paper").train.crop_fill == "zeros"
    assert table_config("cpu").train.crop_fill == "reflect"          # the committed table, said in its header
    x = torch.ones(64, 3, 8, 8)
    zeros = random_crop_flip(x, 2, False, torch.Generator().manual_seed(0), fill="zeros")
    reflect = random_crop_flip(x, 2, False, torch.Generator().manual_seed(0), fill="reflect")
    assert (zeros == 0).any() and torch.equal(reflect, x)


def test_the_crop_fill_field_leaves_the_committed_table_id_as_it_was():
    from uebench.data import load_dataset
    from uebench.presets import table_config
    from uebench.plan import table_identity
    if not SUBSET.exists():
        pytest.skip(f"needs the shared CIFAR-10 subset at {SUBSET}")
    cfg = table_config("cpu", dataset=f"npz:{SUBSET}")
    dataset = load_dataset(cfg.dataset, train_subset=cfg.train_subset, test_subset=cfg.test_subset)
    assert table_identity(cfg, dataset)[0] == "supervised-smallcnn-15ep-a99dd5"
    zero = table_config("cpu", dataset=f"npz:{SUBSET}", crop_fill="zeros")
    assert table_identity(zero, dataset)[0] != "supervised-smallcnn-15ep-a99dd5"
