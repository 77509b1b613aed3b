"""LE and AVATAR, diffusion purification (defenses/le.py, defenses/avatar.py)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import uebench.toolkit.sampling as sampling
from conftest import FAST_DIFFUSION, random_model, tiny_images
from uebench.defenses.avatar import AVATAR
from uebench.defenses.le import LE
from uebench.registry import DEFENSES
from uebench.toolkit.perceptual import perceptual_distance


def test_le_and_avatar_share_one_cached_model(tiny, reference, ctx, monkeypatch):
    calls = []
    real = sampling.train_diffusion
    monkeypatch.setattr(sampling, "train_diffusion", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    LE(**FAST_DIFFUSION).prepare(reference, ctx)
    sampling._LOADED.clear()                       # a new process: only the disk cache is left
    AVATAR(**FAST_DIFFUSION).prepare(reference, ctx)
    assert len(calls) == 1
    assert ctx.notes["diffusion"]["source"] == "disk cache"
    other_seed = replace(ctx, seed=1, notes={})     # the seed is part of the key
    AVATAR(**FAST_DIFFUSION).prepare(reference, other_seed)
    assert len(calls) == 2


@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 8, 8), (3, 30, 30)])
@pytest.mark.parametrize("defense", [LE, AVATAR])
def test_purify_keeps_shape_and_range(defense, shape, ctx):
    c, h, w = shape
    x, y = tiny_images(24, channels=c, size=h)
    reference = tiny_images(24, channels=c, size=h, seed=1)
    ctx = replace(ctx, image_shape=shape)
    out = defense(**FAST_DIFFUSION, stride=10 if defense is LE else 50).purify(x, y, reference, ctx)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert (out - x).abs().mean() > 1e-3               # it changed the images
    expected_pad = [1, 1, 1, 1] if h == 30 else [0, 0, 0, 0]   # 30 → 32 for the 3-level UNet
    assert ctx.notes["diffusion"]["padding"] == expected_pad


def test_guidance_pulls_the_sample_towards_the_unlearnable_example(tiny, reference, ctx):
    """Same seed, same noise: the pixel (MSE) guidance leaves the output closer to x_ue in
    MSE than no guidance, the more so the larger the scale; the perceptual guidance
    leaves it closer in the perceptual distance. (The per-image strength, guidance_batch=1,
    so that a barely trained model shows the mechanics clearly.)"""
    x, y = tiny[0][:16], tiny[1][:16]
    purified = lambda **kw: LE(**FAST_DIFFUSION, stride=1, passes=1, guidance_batch=1, **kw).purify(
        x, y, reference, replace(ctx, notes={}))
    unguided = purified(guidance_scale=0.0)
    mse = lambda out: (out - x).pow(2).mean().item()
    pixel_guided = purified(switch_step=-1)                      # MSE at every step
    stronger = purified(switch_step=-1, guidance_scale=3 * 70000.0)
    assert mse(stronger) < mse(pixel_guided) < 0.5 * mse(unguided)
    perceptual = perceptual_distance("reference", reference, ctx)
    perceptually_guided = purified(switch_step=20)                          # perceptual at every step
    with torch.no_grad():
        far, near = (perceptual(out * 2 - 1, x * 2 - 1).mean().item() for out in (unguided, perceptually_guided))
    assert near < 0.5 * far


def test_distance_switch_happens_at_the_right_step(tiny, reference, ctx):
    x, y = tiny[0][:8], tiny[1][:8]
    LE(**FAST_DIFFUSION, stride=1, passes=1).purify(x, y, reference, ctx)
    used = ctx.notes["schedule"]["guidance"]
    assert used == [[t, "mse"] for t in range(20, 10, -1)] + [[t, "perceptual"] for t in range(10, -1, -1)]
    ctx2 = replace(ctx, notes={})
    LE(**FAST_DIFFUSION, stride=5, passes=1, switch_step=4).purify(x, y, reference, ctx2)
    assert ctx2.notes["schedule"]["guidance"] == [[20, "mse"], [15, "mse"], [10, "mse"], [5, "mse"],
                                                  [0, "perceptual"]]


def test_guidance_scale_follows_the_official_formula():
    assert LE().m == pytest.approx((2 * 8 / 255) / 3 / 70000)
    assert LE(budget=16 / 255, guidance_scale=35000).m == pytest.approx(4 * LE().m)


def test_guidance_pulls_each_pixel_as_hard_at_any_image_size():
    """The official scale was set for 32×32×3 images; on 8×8 grey digits a plain mean pulled
    each pixel 48 times harder and the chain diverged (LE left digits at chance)."""
    from uebench.defenses.le import Guidance
    pulls = []
    for channels, size in ((1, 8), (3, 32)):
        x_ue = torch.full((2, channels, size, size), 0.5)
        guide = LE(**FAST_DIFFUSION).guide_towards(random_model(channels, size), x_ue, Guidance(None, torch.Generator()))
        pulls.append(guide(torch.zeros_like(x_ue), 15).mean().item())
    assert pulls[1] > 0
    assert pulls[0] == pytest.approx(pulls[1], rel=0.05)


@pytest.mark.parametrize("batch", [500, 3])
def test_guidance_of_each_image_equals_the_official_batch_mean_at_batch_500(batch):
    """The official code pulls with the gradient of F.mse_loss (a mean over its batch of
    500); ours gives every image that same pull, at any batch size we run."""
    import math

    import torch.nn.functional as F

    from uebench.defenses.le import Guidance
    model, le, t = random_model(3, 32), LE(**FAST_DIFFUSION), 15                    # t > 10: the MSE steps
    g = torch.Generator().manual_seed(0)
    x_ue, x_t = (torch.rand(batch, 3, 32, 32, generator=g) * 2 - 1 for _ in range(2))
    ours = le.guide_towards(model, x_ue, Guidance(None, torch.Generator().manual_seed(1)))(x_t, t)
    target = model.crop(model.q_sample(x_ue, t, torch.randn(x_ue.shape, generator=torch.Generator().manual_seed(1))))
    x_in = x_t.clone().requires_grad_(True)
    if batch == 500:
        loss = F.mse_loss(model.crop(x_in), target)                        # the official line
    else:   # these images' terms of the official mean over 500 images
        loss = F.mse_loss(model.crop(x_in), target, reduction="sum") / (500 * 3 * 32 * 32)
    official, = torch.autograd.grad(-loss, x_in)
    a = model.alphas_cumprod[t].item()
    official = math.sqrt(1 - a) / (le.m * math.sqrt(a)) * official
    torch.testing.assert_close(ours, official, rtol=1e-5, atol=1e-9)
    strong = LE(**FAST_DIFFUSION, guidance_batch=1).guide_towards(model, x_ue, Guidance(None, torch.Generator().manual_seed(1)))
    torch.testing.assert_close(strong(x_t, t), 500 * official, rtol=1e-5, atol=1e-7)


def test_per_image_guidance_does_not_depend_on_the_batch(reference, ctx):
    """Distances are per image: image 0's gradient is the same alone or in a batch."""
    distance = perceptual_distance("reference", reference, ctx)
    a, b = torch.rand(4, 3, 16, 16) * 2 - 1, torch.rand(4, 3, 16, 16) * 2 - 1
    for d in (distance, lambda u, v: (u - v).pow(2).flatten(1).mean(1)):
        grads = []
        for n in (4, 1):
            x_in = a[:n].clone().requires_grad_(True)
            grad, = torch.autograd.grad(-d(x_in, b[:n]).sum(), x_in)
            grads.append(grad[0])
        assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_fit_trains_on_purified_images_and_previews_them(tiny, reference, ctx):
    x, y = tiny
    model = LE(**FAST_DIFFUSION, stride=10, passes=1).fit(x, y, reference, ctx)
    assert model(x[:2]).shape == (2, 4)
    preview = ctx.previews["purified"]         # the runner draws it under the clean and unlearnable rows
    assert preview.shape == (8, *x.shape[1:]) and not torch.equal(preview, x[:8])


def test_purification_is_deterministic(tiny, reference, ctx):
    x, y = tiny[0][:16], tiny[1][:16]
    le = LE(**FAST_DIFFUSION, stride=10, passes=2)
    first = le.purify(x, y, reference, ctx)
    second = le.purify(x, y, reference, replace(ctx, notes={}))
    assert torch.equal(first, second)


def test_registered_and_presets_share_the_diffusion_settings():
    keys = ("diffusion", "diffusion_steps", "diffusion_max_timestep", "diffusion_ema")
    for preset in ("smoke", "demo", "cpu", "paper"):
        le, avatar = DEFENSES.get("le").for_preset(preset), DEFENSES.get("avatar").for_preset(preset)
        assert [getattr(le, k) for k in keys] == [getattr(avatar, k) for k in keys], preset
    assert LE().diffusion == "ddpm-cifar" and LE().t_star == 20 and LE().passes == 4
    assert AVATAR().t_star == 100 and AVATAR().passes == 1


def test_stand_in_distance_pulls_as_hard_as_the_pixel_distance(reference, ctx):
    """Unscaled, the stand-in pulled ~40 times harder than the pixel MSE on CIFAR-10 and LE
    painted noise into every image; calibrated, the two gradients have the same size."""
    distance = perceptual_distance("reference", reference, ctx)
    assert "scale" in ctx.notes["perceptual"]
    a = reference[0][16:48] * 2 - 1                                  # another noise draw than the calibration
    b = (a + 0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(5))).clamp(-1, 1)
    norms = []
    for d in (distance, lambda u, v: (u - v).pow(2).flatten(1).mean(1)):
        x = a.clone().requires_grad_(True)
        grad, = torch.autograd.grad(d(x, b).sum(), x)
        norms.append(grad.flatten(1).norm(dim=1).mean().item())
    assert norms[0] == pytest.approx(norms[1], rel=0.3)
