"""BridgePure: a diffusion bridge, trained on a few leaked pairs, from protected to clean images."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from uebench.api import Defense
from uebench.toolkit.bridge import sample, train_bridge
from uebench.toolkit.diffusion import CONFIGS, make_unet, padding_for


@dataclass
class BridgePure(Defense):
    """Wang et al., "BridgePure: Limited Protection Leakage Can Break Black-Box Data Protection",
    NeurIPS 2025 (EhanW/bridge-pure, ``prepare_imgs.py``, ``scripts/ddbm_train.py``, ``scripts/image_sample.py``).

    Threat model: besides the protected training set, the defender holds ``pairs`` = k leaked
    (clean, protected) pairs (the paper's Table 1: 4,000 on CIFAR-10), here k protected images of the
    cell's split with their clean originals, drawn per seed (``Defense.leaked_pairs``; the record
    keeps k and the draw). A denoising diffusion bridge (:mod:`uebench.toolkit.bridge`, the DDBM VE
    bridge of the official code) learns to carry a protected image to its clean version from those
    pairs alone; every protected image is then run through it and the victim trains on the result.
    Nothing else of the data is used (the clean reference split is not).

    Defaults (official CIFAR-10 scripts): RAdam lr 1e-4, batch 256, 100,000 steps, EMA 0.9999; the
    protected image as the bridge's start and condition; sampling with 40 Karras steps, churn 0.33
    (the scripts run 0.33 and 0.8), guidance 0.5; output truncated to uint8 as the official export.
    The official network is ADM's UNet (192 channels, 280M parameters); uebench uses diffusers'
    ``UNet2DModel`` in the named size ``network`` (``ddpm-cifar``: 36M; ``tiny``: 0.6M), with the
    start image concatenated to its input. The ``cpu`` preset: 500 pairs (the repository's example
    scripts), the tiny network, 800 steps of batch 64 at lr 1e-3 and EMA 0.99, 8 sampling steps.
    """

    name: ClassVar[str] = "bridgepure"
    paper: ClassVar[str] = "Wang et al., BridgePure: Limited Protection Leakage Can Break Black-Box Data Protection"
    year: ClassVar[int] = 2025
    presets: ClassVar[dict] = {
        "smoke": {"pairs": 32, "network": "tiny", "train_steps": 3, "batch_size": 16, "sample_steps": 2},
        "cpu": {"pairs": 500, "network": "tiny", "train_steps": 800, "batch_size": 64, "lr": 1e-3,
                "ema_decay": 0.99, "sample_steps": 8},
    }
    sample_batch: ClassVar[int] = 500

    pairs: int = 4000
    network: str = "ddpm-cifar"
    train_steps: int = 100_000
    batch_size: int = 256
    lr: float = 1e-4
    ema_decay: float = 0.9999
    sample_steps: int = 40
    churn: float = 0.33
    guidance: float = 0.5

    def __post_init__(self):
        if self.network not in CONFIGS:
            raise ValueError(f"network must be one of {', '.join(CONFIGS)}, got {self.network!r}")
        if min(self.pairs, self.train_steps, self.batch_size, self.sample_steps) < 1 or not 0 <= self.churn < 1:
            raise ValueError("pairs, train_steps, batch_size and sample_steps must be >= 1; churn in [0, 1)")

    def leaked_pairs(self) -> int:
        return self.pairs

    def purify(self, x, y, reference, ctx):
        if ctx.leaked_pairs is None:
            raise ValueError(f"{self.name} trains on leaked (clean, protected) pairs and got none: a cell of "
                             f"`uebench run` draws them (ctx.leaked_pairs)")
        clean, protected = ctx.leaked_pairs
        config = CONFIGS[self.network]
        pad = padding_for(x.shape[-2:], config.pad_multiple)

        def scaled(images: torch.Tensor) -> torch.Tensor:   # [-1, 1], padded for the UNet's levels
            images = images.to(ctx.device) * 2 - 1
            return torch.nn.functional.pad(images, pad, mode="reflect") if any(pad) else images

        torch.manual_seed(ctx.seed)
        network = make_unet(config, x.shape[1], x.shape[-1] + pad[0] + pad[1], in_channels=2 * x.shape[1]).to(ctx.device)
        generator = ctx.generator(1)
        bridge = train_bridge(network, scaled(clean), scaled(protected), self.train_steps, self.batch_size, self.lr,
                              self.ema_decay, generator, progress=lambda **kw: ctx.pbar(**kw))
        h, w = x.shape[-2:]
        out = []
        for part in ctx.pbar(x.split(self.sample_batch), desc="bridgepure"):
            end = sample(bridge, scaled(part), self.sample_steps, self.churn, self.guidance, generator)
            end = end[..., pad[2]:pad[2] + h, pad[0]:pad[0] + w]
            out.append(((end + 1) * 127.5).clamp(0, 255).floor().cpu() / 255)   # uint8, truncated
        purified = torch.cat(out)
        ctx.previews["purified"] = purified[:8]
        ctx.notes["purify"] = f"bridge trained on {len(clean)} leaked pairs, {self.train_steps} steps"
        return purified
