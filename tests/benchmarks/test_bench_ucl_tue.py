"""Generation throughput of the contrastive attacks (UCL class-wise and sample-wise, TUE)
and training throughput of the contrastive protocol (SimCLR + probe).

Each attack runs one short epoch on 256 images of 16×16: UCL class-wise with 3 encoder
and 3 noise batches, UCL sample-wise (one encoder pass, 5 steps per noise batch) without
its class-wise initialisation, TUE as released (CSD only) at its ``cpu`` preset and with
the contrastive term at 5 steps per batch. ``extra_info`` holds images/s and the
surrogate passes per image (forward+backward of one view pair), to read them together.
"""
from __future__ import annotations

import time

import pytest
import torch

from conftest import tiny_images
from uebench.attacks.tue import TUE
from uebench.attacks.ucl import UCL, UCLClasswise
from uebench.context import Context
from uebench.protocols import get_protocol

N_IMAGES, SIZE = 256, 16

CONFIGS = {
    "ucl-classwise": lambda: UCLClasswise.for_preset("cpu", epochs=1, encoder_steps=3, noise_batches=3),
    "ucl": lambda: UCL.for_preset("cpu", epochs=1, init_epochs=0),
    "tue": lambda: TUE.for_preset("cpu", epochs=1),
    "tue-ssl": lambda: TUE.for_preset("cpu", epochs=1, w_ssl=1.0, pgd_steps=5),
}
# surrogate passes per image in one epoch (every batch here holds all N_IMAGES, so a noise
# "pass" is one batch; UCL caps its noise batches at one pass, as the official loader)
PASSES = {"ucl-classwise": 3 + 1, "ucl": 1 + 5, "tue": 0, "tue-ssl": 1 + 5}


def make_ctx(**notes) -> Context:
    return Context(device=torch.device("cpu"), seed=0, num_classes=4, image_shape=(3, SIZE, SIZE),
                   model="smallcnn", progress=False, notes=notes)


def timed(fn, seconds: list[float]):
    start = time.perf_counter()
    out = fn()
    seconds.append(time.perf_counter() - start)
    return out


@pytest.mark.benchmark
@pytest.mark.parametrize("name", list(CONFIGS))
def test_generation_throughput(benchmark, name):
    x, y = tiny_images(n=N_IMAGES, size=SIZE, classes=4)
    attack = CONFIGS[name]()
    seconds: list[float] = []
    out = benchmark.pedantic(lambda: timed(lambda: attack(x, y, make_ctx()), seconds), rounds=2, iterations=1)
    assert (out - x).abs().max() <= attack.eps + 1e-6
    benchmark.extra_info.update({"images": N_IMAGES, "image_size": SIZE, "epochs": 1,
                                 "images_per_s": round(N_IMAGES / min(seconds), 1),
                                 "surrogate_passes_per_image": PASSES[name],
                                 "hparams": dict(vars(attack))})


@pytest.mark.benchmark
def test_contrastive_protocol_throughput(benchmark):
    """One SimCLR epoch (batch 128) plus a 5-epoch probe on precomputed features."""
    x, y = tiny_images(n=N_IMAGES, size=SIZE, classes=4)
    settings = dict(epochs=1, batch_size=128, probe_epochs=5, probe_augment=False)
    seconds: list[float] = []
    model = benchmark.pedantic(lambda: timed(lambda: get_protocol("contrastive").train(x, y, make_ctx(contrastive=settings)),
                                             seconds), rounds=2, iterations=1)
    assert model(x).shape == (N_IMAGES, 4)
    benchmark.extra_info.update({"images": N_IMAGES, "image_size": SIZE, "settings": settings,
                                 "simclr_images_per_s": round(N_IMAGES / min(seconds), 1)})
