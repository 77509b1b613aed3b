"""D-VAE (defenses/dvae.py): the official loss terms, the two stages, and what it removes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import make_ctx, tiny_images
from uebench.defenses.dvae import (DVAE, DisentanglingVAE, SampleAndRate, TransposedConv3x3, instance_norm,
                                   kl_divergence, to_uint8_truncated)

SMALL = dict(width=8, latent_dim=16, batch_size=32)


def test_rate_is_the_official_kl_sum_over_channels_mean_over_batch_and_positions():
    g = torch.Generator().manual_seed(0)
    mu, log_var = torch.randn(4, 6, 3, 3, generator=g), torch.randn(4, 6, 3, 3, generator=g)
    q = torch.distributions.Normal(mu, (0.5 * log_var).exp())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1).mean()
    torch.testing.assert_close(kl_divergence(mu, log_var), expected)


def test_network_shapes_follow_the_official_stem_end_block_7():
    vae = DisentanglingVAE(3, (32, 32), 10, width=64, latent_dim=256)
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 9])
    reconstruction, perturbation, rate = vae(x, y)
    assert reconstruction.shape == perturbation.shape == x.shape and rate.dim() == 0
    assert vae.to_mu(vae.stem(x)).shape == (2, 256, 16, 16)        # 128 × 16 × 16 stem, 256 latents
    assert vae.class_map.weight.shape == (10, 128 * 16 * 16)        # the official spatial embedding
    assert 0 <= reconstruction.min() and reconstruction.max() <= 1   # sigmoid; the perturbation is not squashed
    assert perturbation.min() < 0


def test_floors_take_the_gradient_away_below_them():
    """max(KL, κ) and max(MSE(p̂), 0.002) are constants below their floors (Python's max in the
    official code): under a huge floor the loss is the unweighted one plus β·κ, with its gradients;
    the perturbation term only counts from ``penalty_from`` on."""
    x, y = tiny_images(8)
    torch.manual_seed(0)
    vae = DisentanglingVAE(3, (16, 16), 4, width=8, latent_dim=16)

    def loss_and_grads(defense, epoch=0):
        vae.zero_grad()
        torch.manual_seed(1)                       # the same latent sample each time
        loss = defense.vae_loss(vae, x, y, stage=1, epoch=epoch)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in vae.parameters() if p.grad is not None]

    floored, floored_grads = loss_and_grads(DVAE(rate_floors=(1e6, 1e6), **SMALL))
    unweighted, unweighted_grads = loss_and_grads(DVAE(rate_weights=(0.0, 0.0), **SMALL))
    weighted, weighted_grads = loss_and_grads(DVAE(**SMALL))
    assert floored == pytest.approx(unweighted + 0.01 * 1e6)
    for a, b in zip(floored_grads, unweighted_grads):
        torch.testing.assert_close(a, b)
    assert any(not torch.allclose(a, b) for a, b in zip(weighted_grads, unweighted_grads))
    before, _ = loss_and_grads(DVAE(penalty_from=5, **SMALL), epoch=4)
    after, _ = loss_and_grads(DVAE(penalty_from=5, **SMALL), epoch=5)
    assert after - before >= 0.002 - 1e-6


def test_purified_images_are_uint8_and_deterministic():
    x, y = tiny_images(64)
    torch.manual_seed(0)
    first = DVAE.for_preset("smoke").purify(x, y, None, make_ctx())
    torch.manual_seed(0)
    again = DVAE.for_preset("smoke").purify(x, y, None, make_ctx())
    assert first.shape == x.shape and torch.equal(first, again)
    assert torch.equal(first, to_uint8_truncated(first))
    assert to_uint8_truncated(torch.tensor([0.99999, 0.5, -0.1, 1.2])).mul(255).tolist() == [254, 127, 0, 255]


def test_dvae_removes_a_class_wise_pattern_from_the_poisons():
    """Trained on poisoned images only (no clean data), D-VAE removes the class-wise ±16/255 pattern:
    measured, 5 % of it is left (as the projection of purified − clean on the pattern) after 10
    epochs at width 8."""
    x, y = tiny_images(256)
    pattern = (torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1) * 16 / 255
    poisoned = (x + pattern[y]).clamp(0, 1)
    torch.manual_seed(0)
    purified = DVAE(epochs=10, penalty_from=2, **SMALL).purify(poisoned, y, None, make_ctx())

    def pattern_share(images):
        delta, p = images - x, pattern[y]
        return ((delta * p).flatten(1).sum(1) / p.flatten(1).square().sum(1)).mean().item()

    assert pattern_share(poisoned) == pytest.approx(1.0, abs=0.05)
    assert pattern_share(purified) < 0.2
    assert F.mse_loss(purified, x) < 0.01          # still the images


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="one value per stage"):
        DVAE(rate_floors=(1.0,))
    with pytest.raises(ValueError, match="epochs"):
        DVAE(epochs=0)


def test_rate_weights_follow_the_official_rule():
    """``kld_weight = 0.01 if kld_target > 0.99 else 0.5``: 0.01 in both stages at the official
    floors (1, 3); uebench weighed stage 2 by 0.5 before December 2026."""
    assert DVAE().rate_weights == DVAE.for_preset("cpu").rate_weights == (0.01, 0.01)
    assert DVAE(rate_floors=(0.5, 3.0)).rate_weights == (0.5, 0.01)
    assert DVAE(rate_weights=(0.01, 0.5)).rate_weights == (0.01, 0.5)     # the old behaviour, on request


def test_sample_and_rate_is_the_reparametrisation_and_the_kl_with_their_gradients():
    g = torch.Generator().manual_seed(0)
    mu, log_var, noise = (torch.randn(3, 5, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    mu.requires_grad_(), log_var.requires_grad_()
    assert torch.autograd.gradcheck(lambda m, v: SampleAndRate.apply(m, v, noise), (mu, log_var))
    sample, rate = SampleAndRate.apply(mu, log_var, noise)
    torch.testing.assert_close(sample, mu + noise * (0.5 * log_var).exp())
    torch.testing.assert_close(rate, kl_divergence(mu, log_var))
    # the floor of max(KL, κ) takes the rate's gradient away; the sample's stays
    weights = torch.randn(sample.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((sample * weights).sum() + torch.clamp_min(rate, 1e9), (mu, log_var))
    expected = torch.autograd.grad((mu + noise * (0.5 * log_var).exp()).mul(weights).sum(), (mu, log_var))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


def test_fast_layers_equal_the_official_ones():
    """The stride-1 transposed convolution computed as a convolution, and instance norm as a group
    norm of one channel per group, on NCHW and channels-last inputs."""
    torch.manual_seed(0)
    fast = TransposedConv3x3(6, 4)
    official = torch.nn.ConvTranspose2d(6, 4, 3, padding=1)
    official.load_state_dict(fast.state_dict())
    x = torch.randn(2, 6, 7, 5)
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        torch.testing.assert_close(fast(inp), official(inp))
        torch.testing.assert_close(instance_norm(6)(inp), torch.nn.InstanceNorm2d(6)(inp))
