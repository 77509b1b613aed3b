"""The one training recipe every cell uses (supervised protocol), in the spirit of airbench,
and the training helpers everything shares (autocast, crop and flip, index batches, accuracy).

The whole training set lives on the device as one tensor; crop and flip are done on
whole batches; the defense's hooks are called on every batch. Nothing else varies
between cells, so accuracy differences come from the attack and the defense alone.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Callable, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F


class TrainingHooks(Protocol):
    """What the trainer calls on every batch: a defense (``uebench.api.Defense``) or any
    object with its two hooks (e.g. ``toolkit.augment.AugmentedTraining``)."""

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor: ...


@dataclass
class TrainConfig:
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.1              # peak learning rate (SGD, the field's standard)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"   # onecycle (fast, for small budgets) | cosine | multistep
    milestones: tuple[int, ...] = ()  # epochs at which multistep divides lr by 10
    crop_pad: int = 4            # random-crop padding on 32 px images, scaled with image size
    flip: bool = True
    amp: bool = True             # bf16 autocast on CUDA; ignored on CPU
    # what the crop pads with: zeros (torchvision's RandomCrop(32, padding=4), as APBench and
    # the official EM, REM and TAP code) or reflect (the `cpu` table, made before this field)
    crop_fill: str = "reflect"
    compile: bool = False        # torch.compile the victim (worth it on a GPU for long runs; first steps compile)

    def as_dict(self) -> dict:
        """The recipe, as records and table ids store it. A field added after the first
        tables were written is left out while it has the value those tables used, so their
        ids (a hash of this dict) stay the same: no ``crop_fill`` means reflect, no
        ``compile`` means eager."""
        recipe = asdict(self) | {"milestones": list(self.milestones)}
        for name, before in (("crop_fill", "reflect"), ("compile", False)):
            if recipe[name] == before:
                del recipe[name]
        return recipe


CROP_FILLS = {"zeros": "constant", "reflect": "reflect"}   # crop_fill -> torch's padding mode


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator | None = None,
                     fill: str = "reflect") -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (``fill``: zeros or reflect padding) and
    horizontal flip, batched."""
    n, _, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad), mode=CROP_FILLS[fill])
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device="cpu").to(x.device)
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device="cpu").to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device)[None])            # (n, h)
        cols = (dx[:, None] + torch.arange(w, device=x.device)[None])            # (n, w)
        idx_n = torch.arange(n, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        mask = torch.rand(n, generator=generator, device="cpu").to(x.device) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x.contiguous()


def crop_pad_for(cfg: TrainConfig, image_size: int) -> int:
    """Scale the 4-px-on-32-px crop padding to the image size (1 px on 8×8 digits)."""
    return max(1, round(cfg.crop_pad * image_size / 32)) if cfg.crop_pad else 0


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":   # linear warm-up for 20%, linear decay to 0
        peak = max(1, int(0.2 * total))
        lam: Callable[[int], float] = lambda s: s / peak if s < peak else max(0.0, (total - s) / max(1, total - peak))
    elif cfg.schedule == "cosine":
        lam = lambda s: 0.5 * (1 + math.cos(math.pi * s / total))
    elif cfg.schedule == "multistep":
        marks = [m * steps_per_epoch for m in cfg.milestones]
        lam = lambda s: 0.1 ** sum(s >= m for m in marks)
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; use onecycle, cosine or multistep")
    return torch.optim.lr_scheduler.LambdaLR(opt, lam)


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (no loss scaling needed); a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batches(n: int, batch_size: int, generator: torch.Generator | None = None):
    """Index batches over ``range(n)``: in order, or shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return order.split(batch_size)


def batch_stream(n: int, batch_size: int, generator: torch.Generator):
    """An endless stream of shuffled, equally sized index batches (a fresh permutation per
    epoch, the short remainder dropped), for surrogate training that counts steps rather
    than epochs. Equal sizes keep BatchNorm away from a batch of one."""
    size = min(batch_size, n)
    while True:
        yield from (batch for batch in batches(n, batch_size, generator) if len(batch) == size)


def train_supervised(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                     device: torch.device, seed: int, defense: TrainingHooks | None = None,
                     progress: Callable | None = None) -> nn.Module:
    """Train ``model`` on ``x, y`` (float [0,1] NCHW, int64) and return it in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = model.to(device).to(memory_format=torch.channels_last)
    x, y = x.to(device), y.to(device)
    decay, no_decay = [], []
    for p in model.parameters():      # no weight decay on BN and biases (standard)
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    sched = make_scheduler(opt, cfg, steps_per_epoch)
    pad = crop_pad_for(cfg, x.shape[-1])
    bar = progress(total=cfg.epochs, desc="train") if progress else None
    model.train()
    forward = torch.compile(model) if cfg.compile else model   # the same parameters, compiled kernels
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(x), generator=gen).to(device)
        for i in range(0, len(x), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            xb = random_crop_flip(x[idx], pad, cfg.flip, gen, cfg.crop_fill).contiguous(memory_format=torch.channels_last)
            yb = y[idx]
            if defense is not None:
                xb, yb = defense.augment(xb, yb)
            with autocast(device, cfg.amp):
                loss = defense.loss(forward, xb, yb, epoch) if defense else F.cross_entropy(forward(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    if bar is not None:
        bar.close()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None,
             transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``x, y``, in [0, 1]; by default in batches
    of 512 on the CPU and 4,096 on a GPU (one host synchronisation per batch)."""
    device = next(model.parameters()).device
    batch_size = batch_size or (4096 if device.type == "cuda" else 512)
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device)
            if transform is not None:
                xb = transform(xb)
            with autocast(device):
                correct += (model(xb).argmax(1).cpu() == y[i:i + batch_size]).sum().item()
    finally:
        model.train(was_training)
    return correct / max(1, len(x))
