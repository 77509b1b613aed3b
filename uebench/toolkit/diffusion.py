"""A DDPM of clean data: its configurations, its network and its training.

The diffusion-purification defenses (LE, AVATAR, ECLIPSE) sample from it through
:mod:`uebench.toolkit.sampling`, which also caches the trained model. The model is trained on
the defender's clean *reference* split only (the tuple handed to ``Defense.prepare`` /
``fit``), never on the protected images or the test set.

- Noise schedule (Ho et al., 2020): T = 1000, linear β from 1e-4 to 0.02, fixed-large
  reverse variance σ_t² = β_t, ε-prediction, x̂0 clipped to [-1, 1]. diffusers'
  ``DDPMScheduler`` holds β / ᾱ and does the forward noising; the network is diffusers'
  ``UNet2DModel``.
- Sizes are named configs (:data:`CONFIGS`): ``tiny`` for smoke and CPU runs, and
  ``ddpm-cifar``, the DDPM CIFAR-10 network (channels 128, multipliers 1,2,2,2, two
  residual blocks per level, self-attention at the second level, i.e. 16×16 on 32×32
  images, dropout 0.1, about 36M parameters).
- Any image size and channel count: images are reflect-padded to the next multiple of
  2^(levels − 1) that the UNet's down-sampling needs (28×28 → 32×32 for ``ddpm-cifar``;
  8×8 and 32×32 need no padding) and cropped back after denoising.
- Training follows DDPM: Adam lr 2e-4 with linear warm-up, gradient clipping at 1,
  random horizontal flips, an EMA of the weights (decay a config field: 0.9999 for the
  long runs, smaller for the short CPU runs so the average is not stuck at the
  initialisation), checkpoints written atomically every ``checkpoint_every`` steps and
  resumed from after a crash (the data order and noise continue exactly).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from uebench.storage import tensor_fingerprint, write_atomic
from uebench.train import autocast

if TYPE_CHECKING:
    from diffusers import DDPMScheduler, UNet2DModel

NUM_TIMESTEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02


@dataclass(frozen=True)
class DiffusionConfig:
    """A UNet size plus the recipe that trains it (every field enters the cache key)."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention_levels: tuple[int, ...]   # levels (0 = full resolution) with self-attention
    mid_attention: bool
    dropout: float
    norm_num_groups: int
    train_steps: int
    batch_size: int
    ema_decay: float
    warmup_steps: int
    checkpoint_every: int
    # Training timesteps are drawn uniformly from [0, max_timestep]; all T (the paper) by
    # default. Purification only visits small t (LE 20, AVATAR 100), so short CPU runs
    # spend their few steps there; purifying from a t the model never saw is refused.
    max_timestep: int = NUM_TIMESTEPS - 1
    lr: float = 2e-4
    grad_clip: float = 1.0
    flip: bool = True

    @property
    def pad_multiple(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


CONFIGS: dict[str, DiffusionConfig] = {
    # Ho et al. (2020), CIFAR-10: 35.7M parameters, batch 128, 800k steps, EMA 0.9999.
    "ddpm-cifar": DiffusionConfig(block_out_channels=(128, 256, 256, 256), layers_per_block=2,
                                  attention_levels=(1,), mid_attention=True, dropout=0.1, norm_num_groups=32,
                                  train_steps=800_000, batch_size=128, ema_decay=0.9999, warmup_steps=5000,
                                  checkpoint_every=5000),
    # About 0.6M parameters, three levels, no attention: 0.5 s per training step at batch 64
    # and 3 ms per image per reverse step on one free CPU core (32×32 RGB). A small network
    # trained for few steps: lr 1e-3 (the few steps must count), EMA 0.995, t <= 100 only.
    "tiny": DiffusionConfig(block_out_channels=(16, 32, 64), layers_per_block=1, attention_levels=(),
                            mid_attention=False, dropout=0.0, norm_num_groups=8, train_steps=2000,
                            batch_size=64, ema_decay=0.995, warmup_steps=50, checkpoint_every=100,
                            max_timestep=100, lr=1e-3),
}


def get_config(name: str, **overrides: Any) -> DiffusionConfig:
    """The named config with the non-None ``overrides`` applied."""
    if name not in CONFIGS:
        raise ValueError(f"unknown diffusion config {name!r}; choose one of {', '.join(CONFIGS)}")
    return replace(CONFIGS[name], **{k: v for k, v in overrides.items() if v is not None})


def make_scheduler() -> "DDPMScheduler":
    from diffusers import DDPMScheduler
    return DDPMScheduler(num_train_timesteps=NUM_TIMESTEPS, beta_start=BETA_START, beta_end=BETA_END,
                         beta_schedule="linear", variance_type="fixed_large", clip_sample=True,
                         prediction_type="epsilon")


def make_unet(config: DiffusionConfig, channels: int, size: int, in_channels: int | None = None) -> "UNet2DModel":
    """The ε-network; ``size`` is only recorded in the diffusers config; ``in_channels``: more
    input than output channels (a bridge's network sees its start image too)."""
    from diffusers import UNet2DModel
    levels = len(config.block_out_channels)
    down = ["AttnDownBlock2D" if i in config.attention_levels else "DownBlock2D" for i in range(levels)]
    up = ["AttnUpBlock2D" if levels - 1 - i in config.attention_levels else "UpBlock2D" for i in range(levels)]
    return UNet2DModel(sample_size=size, in_channels=in_channels or channels, out_channels=channels,
                       block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
                       down_block_types=tuple(down), up_block_types=tuple(up), add_attention=config.mid_attention,
                       attention_head_dim=None,   # one head over all channels, as DDPM
                       dropout=config.dropout, norm_num_groups=config.norm_num_groups)


def padding_for(size: tuple[int, int], multiple: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) reflect padding that makes H and W multiples of ``multiple``."""
    h, w = size
    ph, pw = (-h) % multiple, (-w) % multiple
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


# -- training ------------------------------------------------------------------------------

def _ema_update(decay: float) -> Callable:
    """EMA with the usual warm-up, decay_n = min(decay, (1 + n) / (10 + n)) after n updates,
    so a short run's average is not dominated by the random initialisation."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = int(n_averaged)
        d = min(decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(averaged, current, 1 - d)

    return update


def train_diffusion(images: torch.Tensor, config: DiffusionConfig, device: torch.device, seed: int,
                    checkpoint: Path | None = None, progress: Callable | None = None,
                    on_step: Callable[[int], None] | None = None) -> tuple[nn.Module, dict]:
    """Train a DDPM on ``images`` (N, C, H, W in [0, 1]); return the EMA network and facts.

    With ``checkpoint`` set, the state (weights, EMA, optimiser, data order, RNG) is
    written there atomically every ``config.checkpoint_every`` steps, and a run that
    finds the file continues from its step. ``on_step(step)`` is called after each step
    (used to count steps and to simulate a crash in the tests).
    """
    from torch.optim.swa_utils import AveragedModel

    data_fingerprint = tensor_fingerprint(images)
    pad = padding_for(images.shape[-2:], config.pad_multiple)
    x = F.pad(images.float() * 2 - 1, pad, mode="reflect") if any(pad) else images.float() * 2 - 1
    x = x.to(device)
    torch.manual_seed(seed)   # weight init and dropout
    unet = make_unet(config, x.shape[1], x.shape[-1]).to(device)
    ema = AveragedModel(unet, multi_avg_fn=_ema_update(config.ema_decay), use_buffers=True)
    opt = torch.optim.Adam(unet.parameters(), lr=config.lr)
    warmup = lambda step: min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup)
    alphas_cumprod = make_scheduler().alphas_cumprod.to(device)
    gen = torch.Generator().manual_seed(seed)
    step = 0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        # the same run, or the same run extended to more steps
        same_run = {**state["config"], "train_steps": None} == {**asdict(config), "train_steps": None}
        if state["fingerprint"] != data_fingerprint or not same_run or state["step"] > config.train_steps:
            raise RuntimeError(f"checkpoint {checkpoint} belongs to another run; delete it to start afresh")
        unet.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        step = state["step"]

    def save_checkpoint() -> None:
        if checkpoint is not None:
            write_atomic(checkpoint, lambda tmp: torch.save({"step": step, "model": unet.state_dict(), "ema": ema.state_dict(),
                               "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                               "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                               "fingerprint": data_fingerprint, "config": asdict(config)}, tmp))

    bar = progress(total=config.train_steps, desc="diffusion") if progress else None
    if bar is not None:
        bar.update(step)
    start, first_step = time.perf_counter(), step
    unet.train()
    while step < config.train_steps:
        idx = torch.randint(0, len(x), (config.batch_size,), generator=gen)
        x0 = x[idx.to(device)]
        if config.flip:
            flip = (torch.rand(len(idx), generator=gen) < 0.5).to(device)
            x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
        t = torch.randint(0, config.max_timestep + 1, (len(idx),), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with autocast(device):
            loss = F.mse_loss(unet(x_t, t).sample.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(unet.parameters(), config.grad_clip)
        opt.step()
        sched.step()
        ema.update_parameters(unet)
        step += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % config.checkpoint_every == 0 or step == config.train_steps:
            save_checkpoint()
        if on_step is not None:
            on_step(step)
    if bar is not None:
        bar.close()
    facts = {"train_fingerprint": data_fingerprint, "n_train_images": len(images), "steps": step,
             "steps_this_run": step - first_step, "train_seconds": round(time.perf_counter() - start, 1),
             "last_loss": round(loss.item(), 5) if step > first_step else None,
             "parameters": sum(p.numel() for p in unet.parameters()), "padding": list(pad)}
    return ema.module.eval(), facts

