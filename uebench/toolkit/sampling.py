"""Sampling from a trained DDPM, and the purification defenses built on it (LE, AVATAR, ECLIPSE).

- :class:`DiffusionModel`: a trained ε-network (:mod:`uebench.toolkit.diffusion`) with the
  DDPM schedule: forward noising and the reverse chain, with an optional guidance term.
  The reverse process runs over any decreasing subsequence of timesteps ("strided", as in
  DDIM/respaced DDPM): between kept steps t > t′ the step uses β = 1 − ᾱ_t / ᾱ_t′, so
  ``stride=1`` is exactly the full DDPM chain.
- :func:`diffusion_model`: the DDPM of a reference split, cached on disk per (dataset,
  reference split, seed, configuration, training code) and kept in memory, so every cell
  and every diffusion defense reuses one model.
- :class:`DiffusionPurification`: the defenses' shared part (purify the training set batch
  by batch in model space, the global RNG left as it was).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from uebench.api import Defense
from uebench.storage import code_fingerprint, content_key, tensor_fingerprint, write_atomic
from uebench.toolkit.diffusion import DiffusionConfig, get_config, make_scheduler, make_unet, padding_for, train_diffusion
from uebench.train import autocast

if TYPE_CHECKING:
    from uebench.context import Context

PREVIEW_IMAGES = 8     # purified images shown in each cell's figure


@dataclass
class DiffusionModel:
    """A trained ε-network with the DDPM schedule: forward noising and reverse steps.

    Works in the model's space: images in [-1, 1], padded; :meth:`encode` and
    :meth:`decode` convert from and to [0, 1] images of the original size.
    """

    unet: nn.Module
    config: DiffusionConfig
    image_size: tuple[int, int]
    facts: dict = field(default_factory=dict)

    def __post_init__(self):
        self.scheduler = make_scheduler()
        self.alphas_cumprod = self.scheduler.alphas_cumprod.double()   # ᾱ_t, float64 for the ratios
        self.pad = padding_for(self.image_size, self.config.pad_multiple)
        self.unet.eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device: torch.device) -> "DiffusionModel":
        self.unet.to(device)
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32) * 2 - 1
        return F.pad(x, self.pad, mode="reflect") if any(self.pad) else x

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        left, _, top, _ = self.pad
        h, w = self.image_size
        return x[..., top:top + h, left:left + w]

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.crop(x) + 1) / 2).clamp(0, 1)

    def q_sample(self, x0: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (diffusers' ``add_noise``)."""
        return self.scheduler.add_noise(x0, noise, torch.full((len(x0),), t, dtype=torch.long))

    def timesteps(self, t_start: int, stride: int = 1) -> list[int]:
        """The reverse schedule t_start, t_start − stride, ..., always ending at 0."""
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if not 0 <= t_start <= self.config.max_timestep:
            raise ValueError(f"cannot purify from t = {t_start}: the diffusion model was trained on t <= "
                             f"{self.config.max_timestep} (raise diffusion_max_timestep)")
        steps = list(range(t_start, 0, -stride))
        return steps + [0]

    def step_coefficients(self, t: int, t_prev: int) -> tuple[float, float, float, float, float]:
        """(√(1/ᾱ_t), √(1/ᾱ_t − 1), c1, c2, σ²) of the step from t to t_prev (−1: clean)."""
        a = self.alphas_cumprod[t].item()
        a_prev = self.alphas_cumprod[t_prev].item() if t_prev >= 0 else 1.0
        beta = 1 - a / a_prev
        c1 = beta * math.sqrt(a_prev) / (1 - a)             # posterior mean coefficients of q(x_t′ | x_t, x_0)
        c2 = (1 - a_prev) * math.sqrt(1 - beta) / (1 - a)
        return math.sqrt(1 / a), math.sqrt(1 / a - 1), c1, c2, beta   # fixed-large variance σ² = β

    @torch.no_grad()
    def reverse(self, x: torch.Tensor, timesteps: list[int], generator: torch.Generator,
                guide: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> torch.Tensor:
        """Run the reverse chain over ``timesteps`` (decreasing, ending at 0) from x = x_{t_0}.

        Each step: x̂0 = clip(√(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε_θ(x_t, t)), μ = c1 x̂0 + c2 x_t,
        μ′ = μ + σ_t² · guide(x_t, t), x_t′ = μ′ + σ_t z (no noise on the last step).
        ``guide`` returns s_t ∇ log p(condition | x_t), as in classifier guidance.
        """
        device = self.device
        for i, t in enumerate(timesteps):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            recip, recipm1, c1, c2, var = self.step_coefficients(t, t_prev)
            with autocast(device):
                eps = self.unet(x, torch.full((len(x),), t, device=device)).sample.float()
            x0 = (recip * x - recipm1 * eps).clamp(-1, 1)
            mean = c1 * x0 + c2 * x
            if guide is not None:
                mean = mean + var * guide(x, t)
            if t_prev >= 0:
                mean = mean + math.sqrt(var) * torch.randn(x.shape, generator=generator).to(device)
            x = mean
        return x


# -- caching -----------------------------------------------------------------------------

_LOADED: dict[str, DiffusionModel] = {}   # in-process: LE and AVATAR of one run share one object


def diffusion_model(reference: tuple[torch.Tensor, torch.Tensor], config_name: str, ctx: "Context",
                    **overrides: Any) -> DiffusionModel:
    """The DDPM of the reference split's images: loaded from the cache, or trained (resuming
    from a checkpoint) and cached. Facts, the training-data fingerprint among them, go
    into ``ctx.notes["diffusion"]``."""
    images = reference[0]
    if len(images) == 0:
        raise ValueError("diffusion purification needs a clean reference split (n_reference > 0)")
    config = get_config(config_name, **overrides)
    ref_fingerprint = tensor_fingerprint(images)
    key = {"diffusion": config_name, "config": asdict(config), "reference": ref_fingerprint,
           "dataset": ctx.dataset, "seed": ctx.seed, "version": 1, "code": code_fingerprint(train_diffusion)}
    cache_key = content_key(key)
    model = _LOADED.get(cache_key)
    source = "memory"
    if model is None:
        folder = Path(ctx.cache_dir) / "diffusion" / cache_key if ctx.cache_dir is not None else None
        final = folder / "model.pt" if folder is not None else None
        stored = None
        if final is not None and final.exists():
            try:
                stored = torch.load(final, map_location="cpu", weights_only=False)
            except Exception:   # a corrupt file is rebuilt, never trusted
                final.unlink(missing_ok=True)
        if stored is not None:
            unet = make_unet(config, images.shape[1], images.shape[-1])
            unet.load_state_dict(stored["model"])
            facts, source = stored["facts"], "disk cache"
        else:
            unet, facts = train_diffusion(images, config, ctx.device, ctx.seed,
                                          checkpoint=folder / "checkpoint.pt" if folder is not None else None,
                                          progress=lambda **kw: ctx.pbar(**kw))
            if final is not None:
                write_atomic(final, lambda tmp: torch.save({"key": key, "model": unet.state_dict(), "facts": facts}, tmp))
                (folder / "checkpoint.pt").unlink(missing_ok=True)   # the final weights supersede it
            source = "trained"
        model = DiffusionModel(unet.to("cpu"), config, tuple(images.shape[-2:]), facts)
        if len(_LOADED) >= 2:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[cache_key] = model
    ctx.notes["diffusion"] = {"config": config_name, **model.facts, "source": source, "cache_key": cache_key, "reference_fingerprint": ref_fingerprint,
                              "ema_decay": config.ema_decay, "max_timestep": config.max_timestep,
                              "train_steps": config.train_steps}
    return model.to(ctx.device)


# -- the defenses' shared part --------------------------------------------------------------

def preserved_rng(device: torch.device):
    """Restore the global CPU (and this CUDA device's) RNG state on exit."""
    cuda = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=cuda)


# Diffusion settings per preset, shared by LE and AVATAR so that both use one cached model.
DIFFUSION_PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"diffusion": "tiny", "diffusion_steps": 20, "batch_size": 128},
    # digits (8×8 grey): the tiny UNet learns them in a few hundred steps.
    "demo": {"diffusion": "tiny", "diffusion_steps": 600, "batch_size": 256},
    # CIFAR-10 at CPU scale: ~10 min of diffusion training on 2 cores, reused by every cell.
    "cpu": {"diffusion": "tiny", "diffusion_steps": 1500, "batch_size": 256},
    "paper": {},
}


@dataclass
class DiffusionPurification(Defense):
    """Base of the defenses that purify the training set with a DDPM of the reference split.

    Subclasses implement :meth:`purify_batch` (images in model space, [-1, 1], padded).
    """

    diffusion: str = "ddpm-cifar"            # a name in uebench.toolkit.diffusion.CONFIGS
    diffusion_steps: int | None = None       # training steps (None: the config's)
    diffusion_max_timestep: int | None = None
    diffusion_ema: float | None = None
    stride: int = 1                          # reverse over every stride-th timestep (1: full chain)
    batch_size: int = 500                    # images purified at once on the device

    def diffusion_model(self, reference, ctx: "Context") -> DiffusionModel:
        return diffusion_model(reference, self.diffusion, ctx, train_steps=self.diffusion_steps,
                               max_timestep=self.diffusion_max_timestep, ema_decay=self.diffusion_ema)

    def prepare(self, reference, ctx):
        with preserved_rng(ctx.device):
            self.diffusion_model(reference, ctx)

    def purify(self, x, y, reference, ctx):
        # The global RNG is left as it was: whether the models came from the cache or were
        # trained just now must not change the victim's initialisation that follows.
        with preserved_rng(ctx.device):
            model = self.diffusion_model(reference, ctx)
            state = self.setup(model, reference, ctx)
            gen = ctx.generator(7919)
            out = []
            for i in ctx.pbar(range(0, len(x), self.batch_size), desc=self.name):
                xb = model.encode(x[i:i + self.batch_size])
                out.append(model.decode(self.purify_batch(model, xb, gen, state)).cpu())
        purified = torch.cat(out) if out else x.clone()
        ctx.previews["purified"] = purified[:PREVIEW_IMAGES]
        return purified

    def setup(self, model: DiffusionModel, reference, ctx: "Context") -> Any:
        """What one purification builds once and hands to every batch (e.g. the perceptual
        distance); kept off ``self`` so the configured instance stays plain data."""
        return None

    def purify_batch(self, model: DiffusionModel, x: torch.Tensor, generator: torch.Generator,
                     state: Any) -> torch.Tensor:
        """Purify one batch in model space ([-1, 1], padded); ``state`` is what setup returned."""
        raise NotImplementedError
