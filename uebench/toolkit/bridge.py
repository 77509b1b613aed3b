"""A denoising diffusion bridge (DDBM, Zhou et al., ICLR 2024) from protected to clean images.

BridgePure (defenses/bridgepure.py) trains one on leaked (clean, protected) pairs and runs it
from each protected image to a clean-looking one. The variance-exploding bridge of the official
code (EhanW/bridge-pure, ``ddbm/karras_diffusion.py``, the DDBM code base), on [-1, 1] images:

- time is σ ∈ [σ_min, T] with σ_min = 0.002 and T = σ_max = 80; at σ the bridge from x₀ (clean)
  to x_T (protected) has the marginal x_σ = a·x_T + (1 − a)·x₀ + σ√(1 − a)·ε with a = σ²/T²;
- the denoiser D(x_σ, σ, x_T) = c_skip·x_σ + c_out·F(concat(c_in·x_σ, x_T), 250·ln σ), with the
  EDM-style bridge scalings of σ_data = 0.5 at both ends and no covariance (:func:`scalings`);
- training draws σ uniformly in [σ_min, T] and weighs the squared error of D against x₀ by
  1/c_out² (the ``bridge_karras`` weighting);
- sampling starts at x_T (the protected image), on Karras et al.'s schedule (ρ = 7) from
  T − 1e-4 to σ_min and then 0, with Heun steps of the probability-flow ODE, each after one
  stochastic Euler–Maruyama step over the fraction ``churn`` of the interval; D is clamped to
  [-1, 1] at every call; ``guidance`` weighs the pull towards x_T in the ODE.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

SIGMA_MIN, SIGMA_MAX, SIGMA_DATA = 0.002, 80.0, 0.5


def scalings(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in) of the VE bridge at ``sigma`` (σ_data 0.5 at both ends, no covariance)."""
    a = sigma ** 2 / SIGMA_MAX ** 2
    big_a = a ** 2 * SIGMA_DATA ** 2 + (1 - a) ** 2 * SIGMA_DATA ** 2 + sigma ** 2 * (1 - a)
    c_in = big_a.rsqrt()
    c_skip = (1 - a) * SIGMA_DATA ** 2 / big_a
    c_out = (a ** 2 * SIGMA_DATA ** 4 + SIGMA_DATA ** 2 * sigma ** 2 * (1 - a)).sqrt() * c_in
    return c_skip, c_out, c_in


def denoise(network: nn.Module, x: torch.Tensor, sigma: torch.Tensor, x_T: torch.Tensor) -> torch.Tensor:
    """D(x_σ, σ, x_T): the bridge's estimate of the clean end (``sigma``: one value per image)."""
    c_skip, c_out, c_in = (c.view(-1, 1, 1, 1) for c in scalings(sigma))
    out = network(torch.cat([c_in * x, x_T], 1), 250 * torch.log(sigma + 1e-44)).sample
    return c_skip * x + c_out * out


def weighted_error(network: nn.Module, x0: torch.Tensor, x_T: torch.Tensor, sigma: torch.Tensor,
                   noise: torch.Tensor) -> torch.Tensor:
    """Per pair: the 1/c_out²-weighted squared error of D at x_σ from the bridge's marginal
    (``noise``: its ε), averaged over the pixels."""
    a = (sigma ** 2 / SIGMA_MAX ** 2).view(-1, 1, 1, 1)
    x_t = a * x_T + (1 - a) * x0 + sigma.view(-1, 1, 1, 1) * (1 - a).sqrt() * noise
    weight = scalings(sigma)[1].pow(-2).view(-1, 1, 1, 1)
    return (weight * (denoise(network, x_t, sigma, x_T) - x0) ** 2).flatten(1).mean(1)


def bridge_loss(network: nn.Module, x0: torch.Tensor, x_T: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One training loss: σ ~ U(σ_min, T) per pair, :func:`weighted_error`, the batch mean."""
    sigma = (SIGMA_MIN + torch.rand(len(x0), generator=generator) * (SIGMA_MAX - SIGMA_MIN)).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    return weighted_error(network, x0, x_T, sigma, noise).mean()


def karras_sigmas(steps: int) -> torch.Tensor:
    """Karras et al.'s schedule (ρ = 7) from T − 1e-4 down to σ_min, then 0 (``steps`` + 1 values)."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    hi, lo = (SIGMA_MAX - 1e-4) ** (1 / 7), SIGMA_MIN ** (1 / 7)
    return torch.cat([(hi + ramp * (lo - hi)) ** 7, torch.zeros(1, dtype=torch.float64)]).float()


@torch.no_grad()
def sample(network: nn.Module, x_T: torch.Tensor, steps: int, churn: float, guidance: float,
           generator: torch.Generator) -> torch.Tensor:
    """The bridge run from ``x_T`` to σ = 0 (Heun with churn; 3·steps − 1 network calls with churn)."""
    if not 0 <= churn < 1:
        raise ValueError(f"churn must lie in [0, 1), got {churn}")
    sigmas = karras_sigmas(steps).to(x_T.device)
    ones = x_T.new_ones(len(x_T))

    def clean_end(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return denoise(network, x, sigma * ones, x_T).clamp(-1, 1)

    def ode_drift(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        towards_clean = (clean_end(x, sigma) - x) / sigma ** 2
        towards_start = (x_T - x) / (SIGMA_MAX ** 2 - sigma ** 2)
        return -sigma * (towards_clean - guidance * towards_start)

    x = x_T
    for i in range(steps):
        sigma, following = sigmas[i], sigmas[i + 1]
        if churn > 0:   # one Euler–Maruyama step of the reverse SDE over a fraction of the interval
            sigma_hat = sigma + churn * (following - sigma)
            dt = sigma_hat - sigma
            drift = -2 * sigma * (clean_end(x, sigma) - x) / sigma ** 2
            noise = torch.randn(x.shape, generator=generator).to(x.device)
            x = x + drift * dt + noise * dt.abs().sqrt() * (2 * sigma).sqrt()
            sigma = sigma_hat
        d = ode_drift(x, sigma)
        dt = following - sigma
        if following == 0:
            x = x + d * dt                              # the last step is Euler
        else:
            x_next = x + d * dt
            x = x + (d + ode_drift(x_next, following)) / 2 * dt
    return x.clamp(-1, 1)


def train_bridge(network: nn.Module, clean: torch.Tensor, protected: torch.Tensor, steps: int, batch_size: int,
                 lr: float, ema_decay: float, generator: torch.Generator,
                 progress: Callable | None = None) -> nn.Module:
    """RAdam on :func:`bridge_loss` over the pairs (both in [-1, 1]; the same random horizontal
    flip on both images of a pair), with an exponential moving average of the weights (returned)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    ema = AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
    opt = torch.optim.RAdam(network.parameters(), lr=lr)
    bar = progress(total=steps, desc="bridge") if progress else None
    network.train()
    for _ in range(steps):
        idx = torch.randint(0, len(clean), (min(batch_size, len(clean)),), generator=generator)
        flip = (torch.rand(len(idx), generator=generator) < 0.5).view(-1, 1, 1, 1).to(clean.device)
        x0, x_T = (torch.where(flip, t[idx].flip(3), t[idx]) for t in (clean, protected))
        loss = bridge_loss(network, x0, x_T, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update_parameters(network)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
    if bar is not None:
        bar.close()
    return ema.module.eval()
