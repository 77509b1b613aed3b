"""Shared fixtures: tiny structured data and a CPU context, so method tests run in seconds."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("UEBENCH_TEST_THREADS", "2")))

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10_subset.npz"


def tiny_images(n: int = 64, channels: int = 3, size: int = 16, classes: int = 4, seed: int = 0):
    """Learnable toy images: a class-dependent smooth blob plus noise, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    centres = torch.linspace(-0.6, 0.6, classes)
    blob = torch.exp(-((xx[None] - centres[y, None, None]) ** 2 + yy[None] ** 2) / 0.1)   # (n, H, W)
    x = 0.3 + 0.4 * blob[:, None].repeat(1, channels, 1, 1) + 0.1 * torch.rand(n, channels, size, size, generator=g)
    return x.clamp(0, 1), y


def grey_images(n=48, channels=3, size=16, classes=4, seed=0):
    """Mid-grey textured images: no perturbation used here reaches 0 or 1, so nothing clips."""
    g = torch.Generator().manual_seed(seed)
    return 0.4 + 0.2 * torch.rand(n, channels, size, size, generator=g), torch.arange(n) % classes


def make_ctx(seed=0, classes=4, shape=(3, 16, 16)):
    """A CPU context without a cache, for the model-free attacks."""
    from uebench.context import Context
    return Context(device=torch.device("cpu"), seed=seed, num_classes=classes, image_shape=shape,
                   progress=False, cache_dir=None)


@pytest.fixture
def tiny():
    return tiny_images()


@pytest.fixture(scope="module")
def trained_model():
    """A small CNN trained briefly on the tiny images: gradients that mean something."""
    from uebench.models import create_model
    from uebench.train import TrainConfig, train_supervised
    x, y = tiny_images()
    torch.manual_seed(0)
    model = create_model("smallcnn", 3, 4)
    return train_supervised(model, x, y, TrainConfig(epochs=3, batch_size=32), torch.device("cpu"), 0).eval()


# -- diffusion (the toolkit's DDPM and the defenses that purify with it) ------------------

FAST_DIFFUSION = dict(diffusion="tiny", diffusion_steps=3, batch_size=32)   # a barely trained model: mechanics only


@pytest.fixture
def reference():
    """A clean reference split for the diffusion defenses."""
    return tiny_images(48, seed=1)


def random_model(channels=3, size=16, seed=0):
    """A tiny untrained ε-network with the DDPM schedule (enough for the schedule algebra)."""
    from uebench.toolkit.diffusion import CONFIGS, make_unet
    from uebench.toolkit.sampling import DiffusionModel
    torch.manual_seed(seed)
    config = CONFIGS["tiny"]
    return DiffusionModel(make_unet(config, channels, size), config, (size, size))


@pytest.fixture(autouse=True)
def _fresh_diffusion_models():
    """Every test starts without diffusion models kept in memory by an earlier one."""
    import sys
    diffusion = sys.modules.get("uebench.toolkit.sampling")   # the loader keeps them
    if diffusion is not None:
        diffusion._LOADED.clear()
    yield
    if diffusion is not None:
        diffusion._LOADED.clear()


@pytest.fixture
def ctx(tmp_path):
    from uebench.context import Context
    from uebench.train import TrainConfig
    return Context(device=torch.device("cpu"), seed=0, num_classes=4, image_shape=(3, 16, 16),
                   model="smallcnn", train=TrainConfig(epochs=2, batch_size=32),
                   dataset={"name": "tiny"}, cache_dir=tmp_path / "cache",
                   artifact_dir=tmp_path / "artifacts", progress=False)


@pytest.fixture
def cifar_subset():
    if not SHARED_CIFAR.exists():
        pytest.skip(f"needs the shared CIFAR-10 subset at {SHARED_CIFAR} (present on the project's machines)")
    return SHARED_CIFAR


def cell_runner(results: Path):
    """``run_cells(attacks, defenses, **spec_fields) -> {(attack, defense): record}``: the cells
    of the `cpu` table on the CIFAR-10 subset, run (or, when finished, read) in ``results``.

    Only the cells a claim reads are run: each attack under each defense and under none, and
    the clean row under none; the clean row under a defense only when "clean" is among the
    attacks (an LE or AT cell costs minutes). ``cells=[(attack, defense), ...]`` narrows the
    grid to exactly those cells."""
    if not SHARED_CIFAR.exists():
        pytest.skip(f"needs the shared CIFAR-10 subset at {SHARED_CIFAR} (present on the project's machines)")
    from dataclasses import replace

    from uebench.records import read_record
    from uebench.plan import CLEAN, NONE, RunSpec, make_plan
    from uebench.runner import run

    def run_cells(attacks: list[str], defenses: list[str], cells: list[tuple[str, str]] | None = None,
                  **spec_fields) -> dict[tuple[str, str], dict]:
        spec = RunSpec(attacks=[a for a in attacks if a != CLEAN], defenses=defenses,
                       dataset=f"npz:{SHARED_CIFAR}", preset="cpu", seeds=[0], results_dir=results,
                       progress=False, **spec_fields)
        plan = make_plan(spec)

        def wanted(cell) -> bool:
            if cells is not None:
                return (cell.attack.folder, cell.defense.folder) in cells
            return cell.attack.name != CLEAN or cell.defense.name == NONE or CLEAN in attacks

        plan = replace(plan, cells=[c for c in plan.cells if wanted(c)],
                       pending=[c for c in plan.pending if wanted(c)])
        run(spec, plan)
        records = {(cell.attack.folder, cell.defense.folder): read_record(cell.path(plan.table_dir))
                   for cell in plan.cells}
        failed = {key: r and r.error for key, r in records.items() if r is None or r.status != "ok"}
        assert not failed, f"cells failed: {failed}"
        return records

    return run_cells


# The slow evidence tests state claims about cells of the committed `cpu` table (8,000
# protected images, 15 epochs of the small CNN, the methods' own `cpu` presets). They share
# one results folder for the session, so the clean row and each poison set are computed once.
# By default that folder is fresh and every cell is recomputed (about two hours on 2 cores).
# UEBENCH_EVIDENCE_DIR=DIR uses DIR instead: on a copy of results/ the claims are checked
# against the committed records (finished cells are read, missing ones computed). That is
# what CI does, alongside tests/test_reproduce.py, which recomputes a chosen set of committed
# cells from scratch and requires the committed numbers (within three points).
@pytest.fixture(scope="session")
def evidence_records(tmp_path_factory):
    """``evidence_records(attacks, defenses) -> {(attack, defense): record}`` on the CIFAR-10 subset."""
    folder = os.environ.get("UEBENCH_EVIDENCE_DIR")
    return cell_runner(Path(folder) if folder else tmp_path_factory.mktemp("evidence"))


@pytest.fixture(scope="session")
def evidence(evidence_records):
    """``evidence(attacks, defenses) -> {(attack, defense): clean test accuracy}`` on the CIFAR-10 subset."""
    def accuracy(attacks: list[str], defenses: list[str], **spec_fields) -> dict[tuple[str, str], float]:
        records = evidence_records(attacks, defenses, **spec_fields)
        return {key: r.metrics.test_acc for key, r in records.items()}

    return accuracy


def attack_unavailable(attack: str) -> str | None:
    """None when the attack loads, else why not (evidence about it is then skipped with the reason)."""
    from uebench.registry import ATTACKS, PluginError
    try:
        ATTACKS.get(attack)
    except PluginError as err:
        return str(err)
    return None


def skip_unless_available(*attacks: str) -> None:
    for attack in attacks:
        reason = attack_unavailable(attack)
        if reason:
            pytest.skip(f"{attack} unavailable: {reason}")


def run_grids(evidence_fn, grids: list[tuple[list[str], list[str]]]) -> dict:
    """Merge ``evidence_fn(attacks, defenses)`` over ``grids``, leaving out attacks that do not load."""
    cells: dict = {}
    for attacks, defenses in grids:
        attacks = [a for a in attacks if attack_unavailable(a) is None]
        if attacks:
            cells.update(evidence_fn(attacks, defenses))
    return cells


def won_back(acc: dict, attack: str, defense: str) -> tuple[float, float]:
    """(accuracy the attack took from the no-defense victim, accuracy the defense won back): the
    evidence tests' "wins back at least half" compares the second with half the first."""
    taken = acc["clean", "none"] - acc[attack, "none"]
    return taken, acc[attack, defense] - acc[attack, "none"]


@pytest.fixture(autouse=True)
def _benchmarks_need_enabling(request):
    """Benchmarks run only when asked: ``python -m pytest -m benchmark --benchmark-enable tests/benchmarks``."""
    if "benchmark" in request.fixturenames and request.getfixturevalue("benchmark").disabled:
        pytest.skip("benchmarks are disabled by default (pyproject addopts); add --benchmark-enable")
