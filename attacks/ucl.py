"""Contrastive poisoning (UCL): noise that a SimCLR encoder learns instead of the images."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from uebench.api import Attack, ThreatModel, hparams
from uebench.toolkit.contrastive import (ContrastiveConfig, contrastive_loss, learning_rate, make_simclr, set_lr, sgd,
                                 simclr_augmentation)
from uebench.storage import tensor_fingerprint
from uebench.toolkit.perturb import batch_stream, batches, pgd_step, project_linf, uniform_start


@dataclass
class UCLClasswise(Attack):
    """Class-wise contrastive poisoning (CP-C), He, Zha and Katabi, "Indiscriminate Poisoning
    Attacks on Unsupervised Contrastive Learning", ICLR 2023.

    One pattern δ_k per class, ‖δ_k‖∞ ≤ ε, and a SimCLR encoder both *minimise* the
    InfoNCE loss of two differentiable random views (crop 0.2–1, flip, colour jitter,
    grayscale) of clip(x + δ_y). Each epoch trains the encoder for ``encoder_steps``
    batches (SGD, cosine learning rate over the epochs) with δ fixed, then takes
    ``pgd_steps`` signed-gradient steps of ``step_size`` on δ for each of
    ``noise_batches`` batches with the encoder fixed (in eval mode). The patterns become
    features that make the two views of an image trivially similar, so a victim's
    encoder learns them instead of the image content.

    Defaults (the paper's CIFAR-10 SimCLR run): ε = 8/255, 1000 epochs of 20 encoder
    batches and 20 noise batches, 1 step of 0.8/255 per noise batch, batch 512, SGD lr
    0.5 (momentum 0.9, wd 1e-4), temperature 0.5, ResNet-18 surrogate (``arch`` None:
    the table's model, ResNet-18 on the paper preset). Published linear-probe accuracy of
    SimCLR on CP-C CIFAR-10: 68.0 % (clean 91.8 %).

    Deviations:
    - δ is stored in pixel units (the official code stores δ/ε in [−1, 1] with step 0.1,
      the same thing).
    - The official code runs on several GPUs with synchronised BatchNorm; one device here.
    - Batches are drawn from seeded permutations of the protected set (the official
      noise batches restart a fresh shuffled pass each epoch, as here).
    """

    name = "ucl-classwise"
    paper = "He, Zha, Katabi, Indiscriminate Poisoning Attacks on Unsupervised Contrastive Learning, ICLR"
    year = 2023
    target = "contrastive"
    classwise: ClassVar[bool] = True
    presets = {
        "smoke": {"epochs": 2, "encoder_steps": 2, "noise_batches": 2, "batch_size": 128},
        "demo": {"epochs": 20, "encoder_steps": 5, "noise_batches": 5, "batch_size": 256},
        "cpu": {"epochs": 30, "encoder_steps": 10, "noise_batches": 10, "batch_size": 256},
    }

    eps: float = 8 / 255
    epochs: int = 1000
    encoder_steps: int | None = 20      # encoder batches per epoch (None: one pass over the data)
    noise_batches: int | None = 20      # noise batches per epoch (None: one pass over the data)
    pgd_steps: int = 1                  # signed steps per noise batch
    step_size: float = 0.8 / 255
    batch_size: int = 512
    lr: float = 0.5
    temperature: float = 0.5
    arch: str | None = None             # surrogate encoder; None: the table's model

    def __post_init__(self):
        if self.epochs < 0 or self.pgd_steps < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 0, pgd_steps >= 1 and batch_size >= 2")

    def threat_model(self) -> ThreatModel:
        return ThreatModel("linf", self.eps)

    def generate(self, x, y, ctx):
        ctx.notes[self.name] = {"surrogate": self.arch or ctx.model}
        delta = self.classwise_noise(x, y, ctx)
        return (x + delta[y]).clamp(0, 1)

    def classwise_noise(self, x: torch.Tensor, y: torch.Tensor, ctx) -> torch.Tensor:
        """The (K, C, H, W) class patterns, cached on the protected set and the hyperparameters."""
        def build():
            start = uniform_start(torch.empty(ctx.num_classes, *x.shape[1:]), self.eps, ctx.generator(101))
            return self.optimise(x, y, start, y, ctx, seed_offset=101).cpu()
        key = {"method": "ucl-classwise-noise", "hparams": hparams(self), "data": tensor_fingerprint(x, y)}
        return ctx.cached(key, build, name="ucl")

    def optimise(self, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, rows: torch.Tensor, ctx,
                 seed_offset: int) -> torch.Tensor:
        """Alternate encoder training and noise steps; image i carries ``delta[rows[i]]``.

        ``rows`` is ``y`` for class-wise noise and ``arange(N)`` for sample-wise noise.
        Returns the optimised ``delta`` (on ``ctx.device``).
        """
        device = ctx.device
        torch.manual_seed(ctx.seed * 1_000_003 + seed_offset)   # kornia draws from the global generator
        cfg = ContrastiveConfig(batch_size=self.batch_size, lr=self.lr, temperature=self.temperature)
        x, rows, delta = x.to(device), rows.to(device), delta.to(device)
        sample_wise = not self.classwise
        if sample_wise:
            delta = project_linf(delta, x, self.eps)
        _, model = make_simclr(ctx, self.arch, cfg)
        model.to(memory_format=torch.channels_last)
        augment = simclr_augmentation(x.shape[1], tuple(x.shape[-2:]), cfg)
        opt = sgd(model, cfg)
        gen = ctx.generator(seed_offset)
        batch = min(self.batch_size, len(x))
        per_pass = math.ceil(len(x) / batch)
        encoder_stream = batch_stream(len(x), batch, gen)
        bar = ctx.pbar(total=self.epochs, desc=self.name)
        for epoch in range(self.epochs):
            set_lr(opt, learning_rate(cfg, epoch + 1, self.epochs))   # per-epoch cosine, as the official code
            model.train()
            for _ in range(self.encoder_steps or per_pass):
                idx = next(encoder_stream).to(device)
                loss = contrastive_loss(model, augment, (x[idx] + delta[rows[idx]]).clamp(0, 1), cfg)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            model.eval()
            for idx in batches(len(x), batch, gen)[:self.noise_batches or per_pass]:
                idx = idx.to(device)
                # one row per class (or image) present in the batch; gradients of its images add up
                present, where = rows[idx].unique(return_inverse=True)
                d = delta[present]
                for _ in range(self.pgd_steps):
                    d.requires_grad_(True)
                    noise_loss = contrastive_loss(model, augment, (x[idx] + d[where]).clamp(0, 1), cfg)
                    (grad,) = torch.autograd.grad(noise_loss, d)
                    # sample-wise rows are image indices, so x[present] is the images under d
                    d = pgd_step(d.detach(), grad, self.step_size, self.eps, x[present] if sample_wise else None,
                                 descend=True)
                delta[present] = d
            bar.update(1)
            bar.set_postfix(encoder=f"{loss.item():.3f}", noise=f"{noise_loss.item():.3f}")
        bar.close()
        return delta.detach()


@dataclass
class UCL(UCLClasswise):
    """Sample-wise contrastive poisoning (CP-S), He, Zha and Katabi, ICLR 2023.

    One δ_i per image, initialised from the class-wise poison (:class:`UCLClasswise`
    run for ``init_epochs`` with the same ε, batch, lr, temperature and surrogate; its
    result is cached and shared with ``ucl-classwise`` of those settings), then each
    epoch trains the encoder for one pass over the poisoned data and takes ``pgd_steps``
    signed steps on every batch's δ in a second pass. The noise minimises the InfoNCE
    loss, as in the class-wise attack.

    Defaults (the paper's CIFAR-10 SimCLR run): ε = 8/255, 200 epochs, 5 steps of
    0.8/255 per batch, batch 512, SGD lr 0.5, temperature 0.5, initialised from 1000
    class-wise epochs. Published SimCLR linear-probe accuracy on CP-S CIFAR-10: 44.9 %.

    Deviations: as :class:`UCLClasswise`; in addition the sample-wise δ is kept inside
    x + δ ∈ [0, 1] (the official code clips only the image), so the stored noise is what
    the image carries. The official SimCLR poison was taken at epoch 160 of 200; we keep
    the last epoch.
    """

    name = "ucl"
    classwise: ClassVar[bool] = False
    presets = {
        "smoke": {"epochs": 1, "init_epochs": 2, "init_steps": 2, "batch_size": 128},
        "demo": {"epochs": 5, "init_epochs": 20, "init_steps": 5, "batch_size": 256},
        "cpu": {"epochs": 3, "init_epochs": 30, "init_steps": 10, "batch_size": 256},
    }

    epochs: int = 200
    encoder_steps: int | None = None
    noise_batches: int | None = None
    pgd_steps: int = 5
    init_epochs: int = 1000             # class-wise initialisation (0: uniform random start)
    init_steps: int = 20                # its encoder and noise batches per epoch

    def generate(self, x, y, ctx):
        ctx.notes[self.name] = {"surrogate": self.arch or ctx.model}
        if self.init_epochs:
            init = UCLClasswise(eps=self.eps, epochs=self.init_epochs, encoder_steps=self.init_steps,
                                noise_batches=self.init_steps, step_size=self.step_size, batch_size=self.batch_size,
                                lr=self.lr, temperature=self.temperature, arch=self.arch)
            start = init.classwise_noise(x, y, ctx)[y]
        else:
            start = uniform_start(x, self.eps, ctx.generator(102))
        delta = self.optimise(x, y, start, torch.arange(len(x)), ctx, seed_offset=102)
        return (x + delta.cpu()).clamp(0, 1)
