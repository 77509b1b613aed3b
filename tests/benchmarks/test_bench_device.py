"""Throughputs on the device a run would use (CUDA when one is visible, else the CPU).

scripts/device_check.py runs these on the GPU machine and keeps the JSON. Each benchmark
names what it measures in ``extra_info["throughput"]`` and reports ``images_per_s``:

- ``train-<model>``: victim training at the `gpu` recipe's batch (128), crop and flip, bf16
  autocast on CUDA; one image is one forward and backward pass.
- ``pgd-<model>``: one signed-gradient step on a batch of images through a model in eval mode,
  the inner loop of EM, TAP and REM crafting (EM's paper pass is 20 such steps per image, TAP's
  250); one image is one step.
- ``em-craft`` and ``tap-craft``: EM's rounds (one round at the paper's settings: 10 surrogate
  steps, 20 noise steps per image) and TAP's crafting (the paper's 250 steps, one restart; the
  surrogate trained and cached before the timer starts) with the table's victim model (ResNet-18
  on a GPU, the small CNN on the CPU); one image is one crafted image.
- ``le-purify``: LE's guided reverse chain at its paper schedule (t* = 20, 4 passes) with the
  `tiny` DDPM, guidance on; one image is one purified image.

On the CPU the sizes (and LE's chain) are cut down: there they check the code, and the numbers
are not throughputs to plan with.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_images
from uebench.context import Context
from uebench.models import create_model
from uebench.train import TrainConfig, autocast, train_supervised

pytestmark = pytest.mark.benchmark

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = DEVICE.type == "cuda"
N = {"smallcnn": 8192 if ON_GPU else 512, "resnet18": 8192 if ON_GPU else 64}   # CPU: small, a rough figure
ROUNDS = {"rounds": 3, "warmup_rounds": 1} if ON_GPU else {"rounds": 1, "warmup_rounds": 0}


def synchronised(fn):
    """``fn`` followed by a device synchronisation, so the timer sees the GPU's work."""
    def call():
        out = fn()
        if ON_GPU:
            torch.cuda.synchronize()
        return out
    return call


def report(benchmark, throughput: str, images: int) -> None:
    benchmark.extra_info |= {"throughput": throughput, "device": str(DEVICE),
                             "images_per_s": float(f"{images / benchmark.stats.stats.median:.4g}")}


@pytest.mark.parametrize("model_name", ["smallcnn", "resnet18"])
def test_victim_training(benchmark, model_name):
    n = N[model_name]
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    cfg = TrainConfig(epochs=1, batch_size=128, nesterov=False, schedule="cosine", crop_fill="zeros")
    one_epoch = synchronised(lambda: train_supervised(create_model(model_name, 3, 10), x, y, cfg, DEVICE, seed=0))
    benchmark.pedantic(one_epoch, **ROUNDS)
    report(benchmark, f"train-{model_name}", n)


@pytest.mark.parametrize("model_name", ["smallcnn", "resnet18"])
def test_pgd_steps(benchmark, model_name):
    n, batch, steps = N[model_name], 512, 5
    torch.manual_seed(0)
    model = create_model(model_name, 3, 10).to(DEVICE, memory_format=torch.channels_last).eval()
    x = torch.rand(n, 3, 32, 32, device=DEVICE)
    y = torch.randint(0, 10, (n,), device=DEVICE)

    def craft():
        delta = torch.zeros_like(x)
        for i in range(0, n, batch):
            d = delta[i:i + batch].requires_grad_(True)
            for _ in range(steps):
                with autocast(DEVICE):
                    loss = F.cross_entropy(model(x[i:i + batch] + d), y[i:i + batch])
                grad, = torch.autograd.grad(loss, d)
                d = (d - 0.8 / 255 * grad.sign()).clamp(-8 / 255, 8 / 255).detach().requires_grad_(True)
            delta[i:i + batch] = d.detach()
        return delta

    benchmark.pedantic(synchronised(craft), **ROUNDS)
    report(benchmark, f"pgd-{model_name}", n * steps)


@pytest.mark.parametrize("name", ["em", "tap"])
def test_crafting(benchmark, name, tmp_path):
    from uebench.attacks.em import EM
    from uebench.attacks.tap import TAP
    model = "resnet18" if ON_GPU else "smallcnn"
    n = 2048 if ON_GPU else 64
    small = {} if ON_GPU else {"steps": 2} if name == "em" else {"steps": 3, "surrogate_epochs": 1}
    attack = EM(max_rounds=1, **small) if name == "em" else TAP(restarts=1, **small)
    images, labels = tiny_images(n, size=32, classes=10)
    ctx = Context(device=DEVICE, seed=0, num_classes=10, image_shape=(3, 32, 32), model=model,
                  train=TrainConfig(batch_size=128), dataset={"name": "bench"}, cache_dir=tmp_path, progress=False)
    attack(images[:8] if name == "em" else images, labels[:8] if name == "em" else labels, ctx)  # warm up; TAP's surrogate
    benchmark.pedantic(synchronised(lambda: attack(images, labels, ctx)), **ROUNDS)
    report(benchmark, f"{name}-craft", n)


def test_le_purification(benchmark, tmp_path):
    from uebench.defenses.le import LE
    from uebench.toolkit.diffusion import CONFIGS, make_unet
    from uebench.toolkit.sampling import DiffusionModel
    n = 512 if ON_GPU else 8
    images, labels = tiny_images(n, size=32)
    reference = tiny_images(64, size=32, seed=1)
    ctx = Context(device=DEVICE, seed=0, num_classes=4, image_shape=(3, 32, 32), model="smallcnn",
                  train=TrainConfig(epochs=1, batch_size=64), dataset={"name": "bench"}, cache_dir=tmp_path,
                  progress=False)
    torch.manual_seed(0)
    model = DiffusionModel(make_unet(CONFIGS["tiny"], 3, 32), CONFIGS["tiny"], (32, 32)).to(DEVICE)
    le = replace(LE(), perceptual="reference", guidance_batch=n, **({} if ON_GPU else {"t_star": 4, "passes": 1}))
    state = le.setup(model, reference, ctx)
    generator = torch.Generator().manual_seed(0)
    purify = synchronised(lambda: le.purify_batch(model, model.encode(images.to(DEVICE)), generator, state))
    benchmark.pedantic(purify, **ROUNDS)
    report(benchmark, "le-purify", n)
