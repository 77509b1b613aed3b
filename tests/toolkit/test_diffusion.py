"""The DDPM of clean data (uebench.toolkit.diffusion) and the perceptual distances LE uses."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import uebench.toolkit.sampling as sampling
from conftest import FAST_DIFFUSION, random_model, tiny_images
from uebench.defenses.le import LE
from uebench.storage import tensor_fingerprint as fingerprint
from uebench.toolkit.diffusion import CONFIGS, get_config, make_scheduler, make_unet, train_diffusion
from uebench.toolkit.perceptual import FeatureDistance, lpips_unavailable, perceptual_distance


def test_forward_noising_matches_closed_form():
    model = random_model()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    x0 = torch.rand(4, 3, 16, 16) * 2 - 1
    noise = torch.randn(4, 3, 16, 16)
    for t in (0, 1, 20, 100, 999):
        a = alphas_cumprod[t].float()
        expected = a.sqrt() * x0 + (1 - a).sqrt() * noise
        assert torch.allclose(model.q_sample(x0, t, noise), expected, atol=1e-5), t


def test_config_sizes():
    count = lambda cfg: sum(p.numel() for p in make_unet(cfg, 3, 32).parameters())
    assert 35e6 < count(CONFIGS["ddpm-cifar"]) < 37e6   # DDPM's CIFAR-10 network: 35.7M
    assert count(CONFIGS["tiny"]) <= 1e6


@pytest.mark.parametrize("stride", [1, 5, 3])
def test_strided_reverse_matches_diffusers_scheduler(stride):
    """Our reverse chain against diffusers' DDPMScheduler.step over the same timesteps and
    noise: stride 1 is the full DDPM chain, larger strides use the ᾱ ratios (respacing)."""
    model = random_model()
    timesteps = model.timesteps(20, stride)
    assert timesteps[0] == 20 and timesteps[-1] == 0
    assert timesteps == (list(range(20, -1, -1)) if stride == 1 else timesteps)
    x = torch.randn(3, 3, 16, 16)
    ours = model.reverse(x, timesteps, torch.Generator().manual_seed(5))
    scheduler = make_scheduler()
    scheduler.set_timesteps(timesteps=timesteps)
    gen, theirs = torch.Generator().manual_seed(5), x
    with torch.no_grad():
        for t in timesteps:
            eps = model.unet(theirs, torch.full((3,), t)).sample
            theirs = scheduler.step(eps, t, theirs, generator=gen).prev_sample
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_strided_schedule_is_shorter_and_differs():
    model = random_model()
    assert model.timesteps(20, 5) == [20, 15, 10, 5, 0]
    assert model.timesteps(20, 3) == [20, 17, 14, 11, 8, 5, 2, 0]
    x = torch.randn(2, 3, 16, 16)
    full = model.reverse(x, model.timesteps(20, 1), torch.Generator().manual_seed(0))
    strided = model.reverse(x, model.timesteps(20, 5), torch.Generator().manual_seed(0))
    assert not torch.allclose(full, strided)
    with pytest.raises(ValueError, match="trained on t <="):
        model.timesteps(500, 1)   # the tiny model only learned t <= 100


def test_resume_from_checkpoint_continues_at_the_saved_step(tmp_path):
    images = tiny_images(32)[0]
    config = replace(get_config("tiny"), train_steps=5, batch_size=8, checkpoint_every=1)
    done = []

    def crash_after_two(step):
        done.append(step)
        if step == 2:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        train_diffusion(images, config, torch.device("cpu"), 0, checkpoint=tmp_path / "ckpt.pt",
                        on_step=crash_after_two)
    assert done == [1, 2]
    assert torch.load(tmp_path / "ckpt.pt", weights_only=False)["step"] == 2
    resumed_steps = []
    resumed, facts = train_diffusion(images, config, torch.device("cpu"), 0, checkpoint=tmp_path / "ckpt.pt",
                                     on_step=resumed_steps.append)
    assert resumed_steps == [3, 4, 5]
    assert facts["steps"] == 5 and facts["steps_this_run"] == 3
    # the resumed run ends where an uninterrupted one does (data order, noise and EMA restored)
    straight, _ = train_diffusion(images, config, torch.device("cpu"), 0)
    for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    images = tiny_images(16)[0]
    config = replace(get_config("tiny"), train_steps=1, batch_size=4, checkpoint_every=1)
    train_diffusion(images, config, torch.device("cpu"), 0, checkpoint=tmp_path / "ckpt.pt")
    with pytest.raises(RuntimeError, match="another run"):
        train_diffusion(tiny_images(16, seed=3)[0], config, torch.device("cpu"), 0, checkpoint=tmp_path / "ckpt.pt")


def test_diffusion_model_sees_only_the_reference_split(tiny, reference, ctx, monkeypatch):
    seen = []
    real = sampling.train_diffusion
    monkeypatch.setattr(sampling, "train_diffusion", lambda images, *a, **kw: seen.append(images) or real(
        images, *a, **kw))
    x, y = tiny
    le = LE(**FAST_DIFFUSION, stride=10)
    le.prepare(reference, ctx)
    le.purify(x, y, reference, ctx)
    assert len(seen) == 1 and torch.equal(seen[0], reference[0])
    trained_on = ctx.notes["diffusion"]["train_fingerprint"]
    assert trained_on == fingerprint(reference[0]) != fingerprint(x)


def test_feature_distance_is_a_distance(reference, ctx):
    distance = perceptual_distance("reference", reference, ctx)
    assert isinstance(distance, FeatureDistance)
    a = torch.rand(6, 3, 16, 16) * 2 - 1
    b = (a + 0.3 * torch.randn_like(a)).clamp(-1, 1)
    assert torch.allclose(distance(a, a), torch.zeros(6), atol=1e-6)
    assert (distance(a, b) > 0).all()
    assert torch.allclose(distance(a, b), distance(b, a), atol=1e-5)
    assert ctx.notes["perceptual"].startswith("reference-smallcnn")


def test_perceptual_falls_back_with_a_note(reference, ctx):
    reason = lpips_unavailable(16)                 # the tiny images: 16 px
    assert "too small for AlexNet" in reason
    with pytest.raises(RuntimeError, match="perceptual='lpips' asked for"):
        perceptual_distance("lpips", reference, ctx)
    with pytest.warns(UserWarning, match="LPIPS-AlexNet not used"):
        perceptual_distance("auto", reference, ctx)
    assert reason in ctx.notes["perceptual"]
