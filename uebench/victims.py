"""CIFAR-style victims of other architectures, built from torchvision and timm blocks.

Each family is the library network with the stem the CIFAR literature uses for 32-px inputs
(a 3×3 stride-1 first convolution and no max-pool, as kuangliu/pytorch-cifar, the official
EM / REM / TAP code and APBench do), wrapped like the two models of :mod:`uebench.models`:
images in [0, 1] are normalised inside, and every model exposes ``features`` (a Sequential
ending in a flat vector, so :mod:`uebench.toolkit.perceptual` and the SimCLR protocol work on
it) and ``fc``. Any image size and channel count works (8×8 grey digits for the smoke preset).

Width: ``NAME`` is the published width; ``NAME-wF`` multiplies every width by F (channels,
growth rate, or the ViT's head dimension), e.g. ``resnet50-w0.25``. F is written the shortest
way (``0.5``, not ``0.50``) with at most 3 decimals, 0 < F <= 4 and F != 1, so one network has
one name (it is part of a table's id). :data:`CPU_WIDTHS` is the width that makes a ``cpu``
cell (8,000 images, 15 epochs) take minutes on 2 cores; ``uebench list models`` shows both.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn


def _normalize() -> nn.Module:
    from uebench.models import Normalize
    return Normalize()


class Classifier(nn.Module):
    """``fc(features(x))``, the interface every uebench model has."""

    def __init__(self, features: nn.Sequential, feature_dim: int, num_classes: int):
        super().__init__()
        self.features, self.feature_dim = features, feature_dim
        self.fc = nn.Linear(feature_dim, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def _c(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def _stem_conv(c_in: int, c_out: int, bias: bool = False) -> nn.Conv2d:
    """The 3×3 stride-1 CIFAR stem, initialised as the libraries initialise their convolutions."""
    conv = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=bias)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def _pool() -> list[nn.Module]:
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten()]


def resnet50(in_channels: int, num_classes: int, width: float = 1.0) -> nn.Module:
    """timm's ResNet with Bottleneck blocks [3, 4, 6, 3]; stem: 3×3 stride-1 conv, no max-pool."""
    from timm.models.resnet import Bottleneck, ResNet
    chans = tuple(_c(c, width) for c in (64, 128, 256, 512))
    # a "deep" stem is the one whose width timm lets us set (2 × stem_width); it is replaced
    net = ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, in_chans=in_channels,
                 channels=chans, stem_width=chans[0] // 2 or 1, stem_type="deep")
    net.conv1 = _stem_conv(in_channels, net.bn1.num_features)
    stem = nn.Sequential(net.conv1, net.bn1, net.act1)
    return Classifier(nn.Sequential(_normalize(), stem, net.layer1, net.layer2, net.layer3, net.layer4, *_pool()),
                      net.num_features, num_classes)


VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16(in_channels: int, num_classes: int, width: float = 1.0) -> nn.Module:
    """torchvision's VGG-16 layers with batch norm (``vgg.make_layers``); the CIFAR head: one
    linear layer on the 512 channels (kuangliu/pytorch-cifar, APBench). Max-pools round up, so
    inputs smaller than 32 px keep a 1×1 map."""
    from torchvision.models.vgg import make_layers
    layers = make_layers([v if v == "M" else _c(v, width) for v in VGG16], batch_norm=True)
    first = layers[0]
    layers[0] = _stem_conv(in_channels, first.out_channels, bias=True)
    for i, m in enumerate(layers):
        if isinstance(m, nn.MaxPool2d):
            layers[i] = nn.MaxPool2d(2, ceil_mode=True)
    return Classifier(nn.Sequential(_normalize(), *layers, *_pool()), _c(512, width), num_classes)


def mobilenetv2(in_channels: int, num_classes: int, width: float = 1.0) -> nn.Module:
    """torchvision's MobileNetV2 (``width_mult``, channels rounded to multiples of 8) with the
    CIFAR settings of kuangliu/pytorch-cifar: a stride-1 first conv and stride 1 in the
    24-channel stage, so 32 px end at 4×4."""
    from torchvision.models.mobilenetv2 import MobileNetV2
    setting = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
               [6, 320, 1, 1]]
    net = MobileNetV2(num_classes=num_classes, width_mult=width, inverted_residual_setting=setting)
    stem = net.features[0]
    stem[0] = _stem_conv(in_channels, stem[0].out_channels)
    return Classifier(nn.Sequential(_normalize(), *net.features, *_pool()), net.last_channel, num_classes)


def densenet121(in_channels: int, num_classes: int, width: float = 1.0) -> nn.Module:
    """torchvision's DenseNet-121 (blocks 6, 12, 24, 16; growth rate 32·F, 64·F initial
    features); stem: 3×3 stride-1 conv, no max-pool (three transitions take 32 px to 4×4)."""
    from torchvision.models.densenet import DenseNet
    growth = _c(32, width)
    net = DenseNet(growth_rate=growth, block_config=(6, 12, 24, 16), num_init_features=2 * growth,
                   num_classes=num_classes)
    net.features.conv0 = _stem_conv(in_channels, 2 * growth)
    net.features.pool0 = nn.Identity()
    dim = net.classifier.in_features
    return Classifier(nn.Sequential(_normalize(), *net.features, nn.ReLU(inplace=True), *_pool()), dim, num_classes)


class _Tokens(nn.Module):
    """A timm ViT up to its pooled pre-logits (the class token after the final norm)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)


def vit_tiny(in_channels: int, num_classes: int, width: float = 1.0) -> nn.Module:
    """timm's VisionTransformer in the ViT-Tiny layout (depth 12, 3 heads of 64·F dimensions,
    MLP ratio 4) with 4×4 patches on 32 px (64 tokens + the class token). Position embeddings are
    for 32 px and resampled for other sizes (``dynamic_img_size``); sizes not divisible by 4 are
    padded (``dynamic_img_pad``)."""
    from timm.models.vision_transformer import VisionTransformer
    dim = 3 * _c(64, width)
    net = VisionTransformer(img_size=32, patch_size=4, in_chans=in_channels, num_classes=num_classes,
                            embed_dim=dim, depth=12, num_heads=3, mlp_ratio=4.0,
                            dynamic_img_size=True, dynamic_img_pad=True)
    return Classifier(nn.Sequential(_normalize(), _Tokens(net)), dim, num_classes)


def resnet18_width(in_channels: int, num_classes: int, width: float = 1.0) -> nn.Module:
    """The ResNet-18 of :mod:`uebench.models` (its BasicBlock, built in the same order) with
    every width multiplied by F; at F = 1 it is ``resnet18`` itself, weight for weight."""
    from uebench.models import BasicBlock
    w = [_c(c, width) for c in (64, 128, 256, 512)]
    layers, c_in = [], w[0]
    for c_out, stride in [(w[0], 1), (w[0], 1), (w[1], 2), (w[1], 1), (w[2], 2), (w[2], 1), (w[3], 2), (w[3], 1)]:
        layers.append(BasicBlock(c_in, c_out, stride))
        c_in = c_out
    features = nn.Sequential(_normalize(), nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]),
                             nn.ReLU(inplace=True), *layers, *_pool())
    return Classifier(features, w[3], num_classes)


def smallcnn_width(in_channels: int, num_classes: int, width: float = 1.0) -> nn.Module:
    from uebench.models import SmallCNN
    return SmallCNN(in_channels, num_classes, width=_c(32, width))


@dataclass(frozen=True)
class Family:
    build: Callable[..., nn.Module]     # (in_channels, num_classes, width) -> model
    reference: str                      # the paper
    source: str                         # what it is built from


FAMILIES: dict[str, Family] = {
    "smallcnn": Family(smallcnn_width, "uebench's CPU model (4 conv-BN-ReLU blocks)", "uebench.models.SmallCNN"),
    "resnet18": Family(resnet18_width, "He et al., Deep Residual Learning for Image Recognition, CVPR 2016",
                       "uebench.models.ResNet18 (the CIFAR variant of the UE papers)"),
    "resnet50": Family(resnet50, "He et al., Deep Residual Learning for Image Recognition, CVPR 2016",
                       "timm ResNet, Bottleneck [3, 4, 6, 3]"),
    "vgg16": Family(vgg16, "Simonyan & Zisserman, Very Deep Convolutional Networks, ICLR 2015 (with BN)",
                    "torchvision vgg.make_layers (VGG-16-BN)"),
    "mobilenetv2": Family(mobilenetv2, "Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks, "
                                       "CVPR 2018", "torchvision MobileNetV2"),
    "densenet121": Family(densenet121, "Huang et al., Densely Connected Convolutional Networks, CVPR 2017",
                          "torchvision DenseNet"),
    "vit-tiny": Family(vit_tiny, "Dosovitskiy et al., An Image is Worth 16x16 Words, ICLR 2021 (ViT-Tiny, patch 4)",
                       "timm VisionTransformer"),
}

# The width at which a `cpu` cell takes minutes (see `uebench list models` for step times).
CPU_WIDTHS = {"resnet18": 0.25, "resnet50": 0.125, "vgg16": 0.25, "mobilenetv2": 0.25, "densenet121": 0.125,
              "vit-tiny": 0.25}
# Seconds of one forward+backward SGD step at batch 256 of 3×32×32, one thread, on the 2-core Xeon
# of the `cpu` table while other jobs used the cores (load 3 to 5; the faster of two runs of
# step_seconds; expect ±50 %). A `cpu` cell is about 470 such steps (8,000 images × 15 epochs).
STEP_SECONDS: dict[str, float] = {
    "smallcnn": 0.42, "resnet18": 11.8, "resnet18-w0.25": 0.96, "resnet50-w0.125": 2.58, "vgg16-w0.25": 0.41,
    "mobilenetv2-w0.25": 1.93, "densenet121-w0.125": 2.65, "vit-tiny-w0.25": 1.49,
}

_WIDTH = re.compile(r"^(?P<family>[a-z0-9-]+?)-w(?P<width>\d+(\.\d{1,3})?)$")


def parse_model(name: str) -> tuple[str, float]:
    """``NAME`` or ``NAME-wF`` -> (family, width); a ValueError says what is wrong."""
    if name in FAMILIES:
        return name, 1.0
    m = _WIDTH.match(name)
    if not m or m["family"] not in FAMILIES:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(FAMILIES)}, optionally with a width "
                         f"-wF (e.g. resnet50-w0.25); `uebench list models` lists them")
    width = float(m["width"])
    canonical = f"{m['family']}-w{width:g}"
    if not 0 < width <= 4:
        raise ValueError(f"model {name!r}: the width F of -wF must be in (0, 4], got {m['width']}")
    if width == 1:
        raise ValueError(f"model {name!r}: -w1 is the published width; write {m['family']}")
    if canonical != name:
        raise ValueError(f"model {name!r}: write the width the shortest way, {canonical}")
    return m["family"], width


def build(name: str, in_channels: int, num_classes: int) -> nn.Module:
    family, width = parse_model(name)
    return FAMILIES[family].build(in_channels, num_classes, width=width)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def step_seconds(name: str, batch: int = 256, repeats: int = 2, image_shape=(3, 32, 32),
                 num_classes: int = 10) -> float:
    """Seconds of one SGD forward+backward step on random images (after one warm-up step), at
    the current thread count."""
    import time
    torch.manual_seed(0)
    model = build(name, image_shape[0], num_classes).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.rand(batch, *image_shape), torch.randint(0, num_classes, (batch,))
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return min(times[1:])
