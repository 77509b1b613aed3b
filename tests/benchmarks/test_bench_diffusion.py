"""Throughput of the DDPM used by LE and AVATAR, at tiny sizes (the ``tiny`` config)."""
from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch

from conftest import tiny_images
from uebench.toolkit.diffusion import CONFIGS, make_unet, train_diffusion
from uebench.toolkit.sampling import DiffusionModel

pytestmark = pytest.mark.benchmark


def test_bench_diffusion_training(benchmark):
    images = tiny_images(64, size=32)[0]
    config = replace(CONFIGS["tiny"], train_steps=2, batch_size=32, warmup_steps=1)
    benchmark.pedantic(train_diffusion, args=(images, config, torch.device("cpu"), 0), rounds=3, iterations=1)
    benchmark.extra_info["images_per_s"] = config.train_steps * config.batch_size / benchmark.stats.stats.mean


def test_bench_reverse_step(benchmark):
    """One reverse step (ε-network forward and the posterior mean) on a batch of 64."""
    torch.manual_seed(0)
    model = DiffusionModel(make_unet(CONFIGS["tiny"], 3, 32), CONFIGS["tiny"], (32, 32))
    x = torch.randn(64, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    benchmark.pedantic(model.reverse, args=(x, [1, 0], gen), rounds=3, iterations=1)
    benchmark.extra_info["images_per_s_per_step"] = 2 * len(x) / benchmark.stats.stats.mean


def test_bench_eclipse(benchmark):
    """ECLIPSE's purification of a batch of 64 (t* = 11, the full chain) and its compensation on 512 images."""
    from uebench.defenses.eclipse import ECLIPSE
    torch.manual_seed(0)
    model = DiffusionModel(make_unet(CONFIGS["tiny"], 3, 32), CONFIGS["tiny"], (32, 32))
    eclipse = ECLIPSE()
    x = model.encode(tiny_images(64, size=32)[0])
    gen = torch.Generator().manual_seed(0)
    benchmark.pedantic(eclipse.purify_batch, args=(model, x, gen, None), rounds=3, iterations=1)
    images, labels = tiny_images(512, size=32)
    start = time.perf_counter()
    eclipse.augment(images, labels)
    benchmark.extra_info.update({"purify_images_per_s": len(x) / benchmark.stats.stats.mean,
                                 "compensation_images_per_s": len(images) / (time.perf_counter() - start)})
