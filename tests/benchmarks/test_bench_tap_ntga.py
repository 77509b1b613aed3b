"""Generation throughput of TAP, AAP and NTGA at their ``cpu`` preset settings on 256 images of 16×16.

TAP's surrogate is trained in the warm-up round and loaded from the cache afterwards, so
the timed rounds measure crafting only (its training cost, in passes per image, is
reported next to it). NTGA's cost is in kernel evaluations with a gradient, each one a
pass of the surrogate over the block and its validation images. The cost per image,
computed from the hyperparameters, goes into ``extra_info`` next to the measured images/s.
"""
from __future__ import annotations

import time

import pytest
import torch

from conftest import tiny_images
from uebench.attacks.aap import AAP
from uebench.attacks.ntga import NTGA
from uebench.attacks.tap import TAP
from uebench.context import Context
from uebench.train import TrainConfig

N_IMAGES, SIZE = 256, 16

CONFIGS = {
    "tap": lambda: TAP.for_preset("cpu"),
    "aap": lambda: AAP.for_preset("cpu"),
    "ntga-fnn": lambda: NTGA.for_preset("cpu"),
    "ntga-cnn": lambda: NTGA.for_preset("cpu", surrogate="cnn", iterations=3),   # 3: seconds, not minutes
}


@pytest.mark.benchmark
@pytest.mark.parametrize("name", list(CONFIGS))
def test_generation_throughput(benchmark, name, tmp_path):
    x, y = tiny_images(n=N_IMAGES, size=SIZE, classes=4)
    attack = CONFIGS[name]()
    seconds: list[float] = []

    def generate():
        ctx = Context(device=torch.device("cpu"), seed=0, num_classes=4, image_shape=(3, SIZE, SIZE),
                      model="smallcnn", train=TrainConfig(), progress=False, cache_dir=tmp_path)
        start = time.perf_counter()
        out = attack(x, y, ctx)
        seconds.append(time.perf_counter() - start)
        return out

    out = benchmark.pedantic(generate, rounds=3, iterations=1, warmup_rounds=1)
    assert (out - x).abs().max() <= attack.eps + 1e-6
    best = min(seconds)
    passes = attack.passes_per_image()
    benchmark.extra_info.update({
        "images": N_IMAGES, "image_size": SIZE,
        "images_per_s": round(N_IMAGES / best, 1),
        "surrogate_passes_per_image": passes,
        "surrogate_training_passes_per_image": getattr(attack, "surrogate_epochs", 0),   # TAP and AAP
        "surrogate_passes_per_s": round(N_IMAGES * passes / best, 1),
        "hparams": {k: v for k, v in vars(attack).items()},
    })
