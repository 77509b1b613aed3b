"""Game-theoretic unlearnable examples (GUE): a noise generator trained as the leader of a Stackelberg game."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from uebench.api import Attack, ThreatModel
from uebench.toolkit.images import add_levels
from uebench.train import batch_stream


def double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Generator(nn.Module):
    """The official noise generator (``models/unet.py``): a four-level U-Net with average-pool
    down-sampling, bilinear up-sampling and skip connections, widths w, 2w, 4w, 8w (w = 64), a
    1×1 convolution and BatchNorm to the image's channels, then tanh: noise in (-1, 1)."""

    def __init__(self, channels: int = 3, width: int = 64):
        super().__init__()
        w = width
        self.down = nn.ModuleList([double_conv(channels, w), double_conv(w, 2 * w), double_conv(2 * w, 4 * w),
                                   double_conv(4 * w, 8 * w)])
        self.up = nn.ModuleList([double_conv(12 * w, 4 * w), double_conv(6 * w, 2 * w), double_conv(3 * w, w)])
        self.head = nn.Sequential(nn.Conv2d(w, channels, 1), nn.BatchNorm2d(channels))

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            x = block(torch.cat([x, skip], 1))
        return torch.tanh(self.head(x))


def wrong_class_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The leader's payoff f(θ) on clean images: the mean over images of the largest cross-entropy
    towards a wrong class, i.e. −log of the smallest wrong-class probability."""
    log_p = F.log_softmax(logits, 1)
    return (-log_p.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("inf")).min(1).values).mean()


@dataclass
class GUE(Attack):
    """Liu et al., "Game-Theoretic Unlearnable Example Attacks", AAAI 2024 (hong-xian/gue, ``gue.py``,
    ``evaluation.py``).

    A generator G_a maps each image to its noise ε·G_a(x) (sample-wise, within ε by construction).
    The poisoner leads a Stackelberg game against a classifier θ that follows: θ wants a low
    loss g(a, θ) = CE(θ(clip(x + ε·G_a(x))), y) on the poison, the poisoner wants θ bad on clean
    images, f(θ) = :func:`wrong_class_loss`. Each batch takes one first-order bilevel step (BOME's
    value-function method): θ_T, a copy of θ after ``inner_steps`` Adam steps (lr ``inner_lr``) on
    g; q = g(a, θ) − g(a, θ_T); λ = max(0, (η‖∇q‖² − ⟨∇_θ f, ∇_θ q⟩) / (‖∇q‖² + 1e-8)) over the
    gradients of both a and θ; then a ← a − lr_attack·λ·∇_a q and θ ← θ − lr_classifier·(∇_θ f + λ∇_θ q)
    (plain SGD, θ_T held constant). Everything in train mode; no augmentation.

    Defaults (README, CIFAR-10): ε = 8/255, 50 epochs of batch 256, lr_attack 0.1, lr_classifier
    0.01, η = 1.5, 10 inner steps of lr 1e-4; the classifier is ``ctx.model`` unless ``surrogate``
    is set (the paper's ResNet-18); generator width 64. The poison is the generator in eval mode
    on every image, x + ε·G(x) truncated to uint8 as the official export.

    Deviations: the official code keeps the generator whose 5-epoch proxy victim scores lowest on
    the clean *test* set every 5 epochs (and saves the latest); uebench never reads the test set and
    keeps the latest. Batches are drawn without the short remainder. The ``cpu`` preset: 3 epochs,
    generator width 16, 5 inner steps.
    """

    name = "gue"
    paper = "Liu et al., Game-Theoretic Unlearnable Example Attacks, AAAI"
    year = 2024
    presets = {
        "smoke": {"epochs": 1, "batch_size": 32, "width": 4, "inner_steps": 2},
        "cpu": {"epochs": 3, "width": 16, "inner_steps": 5},
    }

    eps: float = 8 / 255
    epochs: int = 50
    batch_size: int = 256
    lr_attack: float = 0.1
    lr_classifier: float = 0.01
    eta: float = 1.5
    inner_steps: int = 10
    inner_lr: float = 1e-4
    width: int = 64
    surrogate: str | None = None     # None: the victim architecture (ctx.model)

    def __post_init__(self):
        if min(self.epochs, self.batch_size, self.width) < 1 or self.inner_steps < 0 or not self.eta > 0:
            raise ValueError("epochs, batch_size and width must be >= 1, inner_steps >= 0, eta > 0")

    def threat_model(self) -> ThreatModel:
        return ThreatModel("linf", self.eps)

    def poison(self, generator: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return (x + self.eps * generator(x)).clamp(0, 1)

    def game_step(self, generator: nn.Module, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        """One bilevel update of the generator and the classifier on a batch; returns λ."""
        follower = copy.deepcopy(classifier)
        inner = torch.optim.Adam(follower.parameters(), lr=self.inner_lr)
        for _ in range(self.inner_steps):       # θ_T: the follower's approximate best response
            with torch.no_grad():
                poisoned = self.poison(generator, x)
            inner.zero_grad(set_to_none=True)
            F.cross_entropy(follower(poisoned), y).backward()
            inner.step()
        follower.requires_grad_(False)
        theta, alpha = list(classifier.parameters()), list(generator.parameters())
        grad_f = torch.autograd.grad(wrong_class_loss(classifier(x), y), theta)
        gain = F.cross_entropy(classifier(self.poison(generator, x)), y)
        grads_gain = torch.autograd.grad(gain, theta + alpha)
        grad_q_theta, grad_gain_alpha = grads_gain[:len(theta)], grads_gain[len(theta):]
        best = F.cross_entropy(follower(self.poison(generator, x)), y)
        grad_best_alpha = torch.autograd.grad(best, alpha)
        grad_q_alpha = [a - b for a, b in zip(grad_gain_alpha, grad_best_alpha)]
        norm_q = sum((g * g).sum() for g in grad_q_theta) + sum((g * g).sum() for g in grad_q_alpha)
        inner_product = sum((a * b).sum() for a, b in zip(grad_f, grad_q_theta))
        lam = F.relu((self.eta * norm_q - inner_product) / (norm_q + 1e-8))
        with torch.no_grad():
            for p, g in zip(alpha, grad_q_alpha):
                p -= self.lr_attack * lam * g
            for p, gf, gq in zip(theta, grad_f, grad_q_theta):
                p -= self.lr_classifier * (gf + lam * gq)
        return float(lam)

    def generate(self, x, y, ctx):
        x, y = x.to(ctx.device), y.to(ctx.device)
        torch.manual_seed(ctx.seed)
        generator = Generator(x.shape[1], self.width).to(ctx.device)
        classifier = ctx.make_model(self.surrogate).to(ctx.device)
        generator.train()
        classifier.train()
        stream = batch_stream(len(x), self.batch_size, ctx.generator(1))
        steps = self.epochs * max(1, len(x) // min(self.batch_size, len(x)))
        lams = []
        for _ in ctx.pbar(range(steps), desc="gue"):
            idx = next(stream)
            lams.append(self.game_step(generator, classifier, x[idx], y[idx]))
        generator.eval()
        with torch.no_grad():
            noise = torch.cat([self.eps * generator(part) for part in x.split(512)])
        ctx.notes["gue"] = {"steps": steps, "last_lambda": round(lams[-1], 4) if lams else None}
        return add_levels(x, self.export_levels(noise))

    def export_levels(self, noise: torch.Tensor) -> torch.Tensor:
        """The official export, (x + ε·G(x)) · 255 truncated: on uint8 images, the image's level plus
        floor(ε·G(x) · 255). Where tanh saturates, ε·G(x) is ±ε exactly in exact arithmetic, but the
        float32 ε times 255 lies a hair beyond 8 and its floor one level beyond the budget; the levels
        are held to ±⌊ε·255⌋, which is the exact floor."""
        bound = float(torch.floor(torch.tensor(self.eps * 255 + 1e-6, dtype=torch.float64)))
        return torch.floor(noise.double() * 255).clamp(-bound, bound)
