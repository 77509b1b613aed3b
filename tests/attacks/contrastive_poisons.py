"""The contrastive attacks at tiny settings, run once per test module (tests of UCL and TUE share them)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from conftest import tiny_images
from uebench.attacks.tue import TUE
from uebench.attacks.ucl import UCL, UCLClasswise

TINY = dict(batch_size=32)


def small_attacks():
    return {
        "ucl-classwise": UCLClasswise(epochs=2, encoder_steps=2, noise_batches=2, **TINY),
        "ucl": UCL(epochs=1, init_epochs=2, init_steps=2, **TINY),
        "tue": TUE(epochs=2, pgd_steps=3, **TINY),
        "tue-ssl": TUE(epochs=1, pgd_steps=2, w_ssl=1.0, **TINY),
    }


@pytest.fixture(scope="module")
def poisons():
    """Every attack run once on the tiny set (no cache), shared by the tests below."""
    from uebench.context import Context
    x, y = tiny_images()
    ctx = Context(device=torch.device("cpu"), seed=0, num_classes=4, image_shape=(3, 16, 16), progress=False)
    return x, y, {name: attack(x, y, replace(ctx, notes={})) for name, attack in small_attacks().items()}
