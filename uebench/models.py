"""Classifiers: a CIFAR-style ResNet-18 and a small CNN for CPU runs; the other victim
architectures (ResNet-50, VGG-16-BN, MobileNetV2, DenseNet-121, ViT-Tiny, and width variants
``NAME-wF`` of every family) are in :mod:`uebench.victims`, behind the same :func:`create_model`.

All take images in [0, 1] of any size and channel count and normalise inside the
model, so every attack and defense works on raw [0, 1] pixels.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn
import torch.nn.functional as F


class Normalize(nn.Module):
    def __init__(self, mean: float = 0.5, std: float = 0.25):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x):
        return (x - self.mean) / self.std


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU blocks, each halving the resolution, then a linear head
    (about 0.24M parameters at width 32). Trains at about 2,000 CIFAR images/s on 2 CPU
    cores, so a 10,000-image cell takes about a minute."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            Normalize(),
            _conv_bn(in_channels, w), nn.MaxPool2d(2),
            _conv_bn(w, 2 * w), nn.MaxPool2d(2),
            _conv_bn(2 * w, 4 * w), nn.MaxPool2d(2, ceil_mode=True),
            _conv_bn(4 * w, 4 * w), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )
        self.feature_dim = 4 * w
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """The CIFAR variant used by every UE paper: 3×3 stem, no max-pool, 4 stages of 2 blocks."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        layers, c_in = [], 64
        for c_out, stride in [(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)]:
            layers.append(BasicBlock(c_in, c_out, stride))
            c_in = c_out
        self.features = nn.Sequential(
            Normalize(),
            nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.feature_dim = 512
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "smallcnn": SmallCNN,
    "resnet18": ResNet18,
}


def check_model(name: str) -> None:
    """Raise a ValueError with a one-line reason unless ``name`` is a model create_model builds."""
    if name not in MODELS:
        from uebench.victims import parse_model
        parse_model(name)


def is_model(name) -> bool:
    try:
        check_model(str(name))
    except ValueError:
        return False
    return True


def create_model(name: str, in_channels: int, num_classes: int) -> nn.Module:
    """Build a classifier by name (``smallcnn``, ``resnet18``, or a :mod:`uebench.victims` name
    such as ``mobilenetv2-w0.5``). Every model exposes ``features`` and ``fc``."""
    if name in MODELS:     # the two models of the committed tables, exactly as they were made
        return MODELS[name](in_channels=in_channels, num_classes=num_classes)
    from uebench.victims import build
    return build(name, in_channels, num_classes)
