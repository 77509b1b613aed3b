"""Augmented unlearnable examples (AUE): error-minimising noise crafted through strong augmentations."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from uebench.api import Attack, ThreatModel
from uebench.toolkit.augment import strength_augmentation
from uebench.toolkit.perturb import batches, pgd
from uebench.train import accuracy, autocast


@dataclass
class AUE(Attack):
    """Augmented unlearnable examples: Wang, Zhu and Gao, "Efficient Availability Attacks against
    Supervised and Contrastive Learning Simultaneously", NeurIPS 2024 (official code:
    github.com/EhanW/AUE-AAP, ``aue.py``).

    Error-minimising noise (min-min, as :class:`uebench.attacks.em.EM`) in which both the
    surrogate's training and the noise's PGD steps see the images through contrastive-style
    augmentations of strength ``strength`` (:func:`uebench.toolkit.augment.strength_augmentation`:
    crop, flip, colour jitter, grayscale). A supervised surrogate is enough: noise that survives
    contrastive augmentations also stops a contrastive learner, so one cheap supervised
    optimisation attacks both protocols.

    Each epoch: one pass of SGD over the perturbed, augmented images (model in train mode), then
    one pass of ``steps`` signed-gradient descent steps on every image's δ (model in eval mode,
    a fresh augmentation per step). The learning rate follows a cosine from ``lr`` to 1e-6 over
    ``epochs``, stepped once per epoch. No stop condition: the official loop runs all epochs.

    Defaults (official ``example.sh`` for CIFAR-10 and ``aue.py``): ε = 8/255, strength 0.6
    (1.0 is the CIFAR-100 setting), 60 epochs, 5 steps of ε/10, ResNet-18 surrogate (here
    ``ctx.model`` unless ``surrogate`` names one), SGD lr 0.1, momentum 0.9, weight decay 1e-4
    on every parameter, batch 128, zero start.

    Deviations:
    - δ is kept so that x + δ is in [0, 1] while crafting (the official sample-wise update does
      the same); the surrogate's training input is therefore in range without a clamp.
    - The augmentation is built from kornia as in the official code, but with the installed
      kornia's defaults for what the official call leaves unset (the crop's aspect ratios
      3/4–4/3, bilinear resampling); kornia 0.7.0 in the official environment.
    - The class-wise variant (``--class-wise``) and the tempering/annealing strength schedules of
      the official script are not provided: the paper's CIFAR numbers use the constant schedule.
    """

    name = "aue"
    paper = ("Wang, Zhu, Gao, Efficient Availability Attacks against Supervised and Contrastive "
             "Learning Simultaneously, NeurIPS")
    year = 2024
    target = "supervised, contrastive"   # one supervised optimisation aimed at both learners
    presets = {
        "smoke": {"epochs": 2, "steps": 2, "step_size": 2 / 255, "batch_size": 32},
        "demo": {"epochs": 10, "batch_size": 128},
        # 8,000 CIFAR images, small CNN: 7 surrogate passes an image an epoch, about 40 s an epoch
        # at one thread; 15 epochs leave the surrogate above 99 % on its augmented poisons.
        "cpu": {"epochs": 15, "batch_size": 128},
    }

    eps: float = 8 / 255
    step_size: float = 0.8 / 255     # ε / 10
    steps: int = 5                   # descent steps on δ per image per epoch
    epochs: int = 60
    strength: float = 0.6            # augmentation strength (CIFAR-10; 1.0 for CIFAR-100)
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    min_lr: float = 1e-6             # the cosine's floor
    surrogate: str | None = None     # None: the victim architecture (ctx.model)

    def __post_init__(self):
        if self.epochs < 1 or self.steps < 0 or self.batch_size < 2:
            raise ValueError("epochs must be >= 1, steps >= 0 and batch_size >= 2")
        if not 0 <= self.strength <= 1:
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")
        if self.step_size <= 0 or self.eps < 0:
            raise ValueError(f"step_size must be > 0 and eps >= 0, got {self.step_size}, {self.eps}")

    def threat_model(self) -> ThreatModel:
        return ThreatModel("linf", self.eps)

    def passes_per_image(self) -> int:
        """Surrogate forward+backward passes per image: one training pass and ``steps`` noise steps an epoch."""
        return self.epochs * (1 + self.steps)

    def learning_rate(self, epoch: int) -> float:
        """The official per-epoch cosine (epoch counted from 0), from ``lr`` to ``min_lr``."""
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * epoch / self.epochs))

    def generate(self, x, y, ctx):
        device = ctx.device
        x, y = x.to(device), y.to(device)
        augment = strength_augmentation(self.strength, x.shape[1], tuple(x.shape[-2:]))
        model = ctx.make_model(self.surrogate).to(device, memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum,
                              weight_decay=self.weight_decay)
        delta = torch.zeros_like(x)
        order = ctx.generator(1)
        bar = ctx.pbar(total=self.epochs, desc=self.name)
        for epoch in range(self.epochs):
            for group in opt.param_groups:
                group["lr"] = self.learning_rate(epoch)
            loss = self.train_pass(model, opt, x, y, delta, augment, order)
            delta = self.noise_pass(model, x, y, delta, augment, order)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
        bar.close()
        poisoned = (x + delta).clamp(0, 1)
        ctx.notes[self.name] = {"surrogate": self.surrogate or ctx.model,
                                "surrogate_acc_poisoned": round(accuracy(model, poisoned, y.cpu()), 4),
                                "surrogate_acc_clean": round(accuracy(model, x, y.cpu()), 4)}
        return poisoned

    def train_pass(self, model, opt, x, y, delta, augment, order: torch.Generator) -> float:
        """One epoch of SGD on the augmented perturbed images; returns the last batch's loss."""
        model.train()
        loss = torch.zeros(())
        for idx in batches(len(x), self.batch_size, order):
            if len(idx) < 2:       # BatchNorm cannot train on a batch of one
                continue
            idx = idx.to(x.device)
            with autocast(x.device):
                loss = F.cross_entropy(model(augment(x[idx] + delta[idx])), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return loss.item()

    def noise_pass(self, model, x, y, delta, augment, order: torch.Generator) -> torch.Tensor:
        """``steps`` error-minimising steps on every image's δ through fresh augmentations."""
        model.eval()     # BatchNorm in inference mode while crafting, as the official code
        delta = delta.clone()
        for idx in batches(len(x), self.batch_size, order):
            idx = idx.to(x.device)
            delta[idx] = pgd(model, x[idx], y[idx], delta[idx], eps=self.eps, step_size=self.step_size,
                             steps=self.steps, descend=True, transform=augment)
        return delta
