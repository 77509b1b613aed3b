"""Training throughput of the victims: one epoch of ``train_supervised`` at batch 128.

32×32×3 images (CIFAR-sized), the shared trainer with crop and flip, on the device the run
would use (CPU here). ``extra_info["images_per_s"]`` is what the README quotes; a cell of
the ``cpu`` preset costs 8,000 images × 15 epochs at the small CNN's rate.
"""
from __future__ import annotations

import pytest
import torch

from uebench.models import create_model
from uebench.train import TrainConfig, train_supervised

N_IMAGES = {"smallcnn": 2048, "resnet18": 256}   # ResNet-18 is ~40× slower on CPU


@pytest.mark.benchmark
@pytest.mark.parametrize("model_name", ["smallcnn", "resnet18"])
def test_training_throughput(benchmark, model_name):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n = N_IMAGES[model_name]
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    cfg = TrainConfig(epochs=1, batch_size=128)

    def one_epoch():
        model = create_model(model_name, 3, 10)
        return train_supervised(model, x, y, cfg, device, seed=0)

    model = benchmark.pedantic(one_epoch, rounds=3, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = round(n / benchmark.stats.stats.median, 1)
    assert not model.training    # the trainer hands back a model ready to evaluate
