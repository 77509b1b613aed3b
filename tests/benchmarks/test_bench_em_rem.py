"""Generation throughput of the error-minimising attacks (EM, EM class-wise, REM, AUE).

Each attack runs at its ``cpu`` preset's per-step settings for one round (REM: one
training step plus the final regeneration) on 256 images of 16×16. The cost in
surrogate forward+backward passes per image, computed from the hyperparameters, goes
into ``extra_info`` next to the measured images/s, so the two can be read together.
"""
from __future__ import annotations

import time

import pytest
import torch

from conftest import tiny_images
from uebench.attacks.aue import AUE
from uebench.attacks.em import EM, EMClasswise
from uebench.attacks.rem import REM
from uebench.context import Context
from uebench.train import TrainConfig

N_IMAGES, SIZE = 256, 16

CONFIGS = {
    "em": lambda: EM.for_preset("cpu", max_rounds=1),
    "em-classwise": lambda: EMClasswise.for_preset("cpu", max_rounds=1),
    "rem": lambda: REM.for_preset("cpu", train_steps=1),
    "aue": lambda: AUE.for_preset("cpu", epochs=1),
}


def passes_per_image(attack) -> float:
    if isinstance(attack, REM):
        return attack.passes_per_image(N_IMAGES)
    if isinstance(attack, AUE):
        return attack.passes_per_image()
    return attack.max_rounds * attack.passes_per_round(N_IMAGES)


@pytest.mark.benchmark
@pytest.mark.parametrize("name", list(CONFIGS))
def test_generation_throughput(benchmark, name):
    x, y = tiny_images(n=N_IMAGES, size=SIZE, classes=4)
    attack = CONFIGS[name]()
    seconds: list[float] = []

    def generate():
        ctx = Context(device=torch.device("cpu"), seed=0, num_classes=4, image_shape=(3, SIZE, SIZE),
                      model="smallcnn", train=TrainConfig(), progress=False)
        start = time.perf_counter()
        out = attack(x, y, ctx)
        seconds.append(time.perf_counter() - start)
        return out

    out = benchmark.pedantic(generate, rounds=2, iterations=1)
    assert (out - x).abs().max() <= attack.eps + 1e-6
    best = min(seconds)
    benchmark.extra_info.update({
        "images": N_IMAGES, "image_size": SIZE,
        "images_per_s": round(N_IMAGES / best, 1),
        "surrogate_passes_per_image": round(passes_per_image(attack), 2),
        "surrogate_passes_per_s": round(N_IMAGES * passes_per_image(attack) / best, 1),
        "hparams": {k: v for k, v in vars(attack).items()},
    })
