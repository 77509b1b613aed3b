"""Generation throughput of the model-free attacks (LSP, AR, OPS, CUDA's conv-blur) and the poison importer.

Each runs at its paper defaults on 512 CIFAR-sized images (3×32×32, 10 classes). None
of them touches a network: the cost in surrogate passes per image is 0, recorded in
``extra_info`` next to the measured images/s for comparison with the model-based attacks.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from uebench.attacks.ar import AR
from uebench.attacks.conv_blur import ConvBlur
from uebench.attacks.external import External
from uebench.attacks.lsp import LSP
from uebench.attacks.ops import OPS
from uebench.budget import check_budget, declared_threat_model
from uebench.context import Context

N_IMAGES, SIZE, CLASSES = 512, 32, 10


def images():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(N_IMAGES, 3, SIZE, SIZE, generator=g) * 255).round() / 255   # uint8 levels
    return x, torch.arange(N_IMAGES) % CLASSES


def released_file(tmp_path, x) -> str:
    """A poison file for the importer: the images themselves, in the original order."""
    path = tmp_path / "released.npz"
    np.savez(path, x_train=(x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return str(path)


CONFIGS = {
    "lsp": lambda tmp_path, x: LSP(),
    "ar": lambda tmp_path, x: AR(),
    "ops": lambda tmp_path, x: OPS(),
    "conv-blur": lambda tmp_path, x: ConvBlur(),
    "external": lambda tmp_path, x: External(path=released_file(tmp_path, x)),
}


@pytest.mark.benchmark
@pytest.mark.parametrize("name", list(CONFIGS))
def test_generation_throughput(benchmark, name, tmp_path):
    x, y = images()
    attack = CONFIGS[name](tmp_path, x)
    seconds: list[float] = []

    def generate():
        ctx = Context(device=torch.device("cpu"), seed=0, num_classes=CLASSES, image_shape=(3, SIZE, SIZE),
                      progress=False, cache_dir=None)
        ctx.train_indices = torch.arange(N_IMAGES)
        start = time.perf_counter()
        out = attack(x, y, ctx)
        seconds.append(time.perf_counter() - start)
        return out

    out = benchmark.pedantic(generate, rounds=2, iterations=1)
    check_budget(x, out, declared_threat_model(attack, (3, SIZE, SIZE)))
    best = min(seconds)
    benchmark.extra_info.update({
        "images": N_IMAGES, "image_size": SIZE, "classes": CLASSES,
        "images_per_s": round(N_IMAGES / best, 1),
        "surrogate_passes_per_image": 0,
        "hparams": {k: v for k, v in vars(attack).items()},
    })
