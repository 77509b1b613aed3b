"""AUE and AAP (attacks/aue.py, attacks/aap.py) and their augmentation (toolkit/augment.py).

The registry-wide contract (shape, range, budget, determinism) is in test_attack_contract.py;
here: what makes these two attacks what the official code computes.
"""
from __future__ import annotations

import math
from dataclasses import replace

import kornia.augmentation as K
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_images
from uebench.attacks.aap import AAP
from uebench.attacks.aue import AUE
from uebench.models import create_model
from uebench.toolkit.augment import AugmentedTraining, strength_augmentation
from uebench.toolkit.perturb import batches, pgd
from uebench.toolkit.surrogate import trained_surrogate
from uebench.train import TrainConfig, train_supervised

EPS = 8 / 255


def find(pipeline, kind):
    return next((op for op in pipeline if isinstance(op, kind)), None)


@pytest.mark.parametrize("s", [0.4, 0.6, 1.0])
def test_the_augmentation_is_the_official_aug_cl_of_strength_s(s):
    """utils.Augment(s).aug_cl: crop scale (max(1 − 0.9 s, 0.05), 1), flip 0.5, jitter 0.4 s ×3 and
    0.1 s with probability min(0.99, 0.8 s), grayscale 0.2 s, in that order."""
    pipeline = list(strength_augmentation(s, 3, (32, 32)))
    assert [type(op) for op in pipeline] == [K.RandomResizedCrop, K.RandomHorizontalFlip,
                                             K.ColorJitter, K.RandomGrayscale]
    crop, flip, jitter, gray = pipeline
    assert tuple(crop._param_generator.scale) == pytest.approx((max(1 - 0.9 * s, 0.05), 1.0))
    assert flip.p == 0.5
    for name, value in (("brightness", 0.4 * s), ("contrast", 0.4 * s), ("saturation", 0.4 * s), ("hue", 0.1 * s)):
        assert getattr(jitter._param_generator, name) == pytest.approx(value), name
    assert jitter.p == pytest.approx(min(0.99, 0.8 * s))
    assert gray.p == pytest.approx(0.2 * s)


def test_the_augmentation_is_differentiable_and_grey_images_get_crop_and_flip_only():
    x = tiny_images(8)[0].requires_grad_(True)
    strength_augmentation(0.6, 3, (16, 16))(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert len(strength_augmentation(0.6, 1, (8, 8))) == 2
    with pytest.raises(ValueError, match="strength"):
        strength_augmentation(1.5, 3, (16, 16))


def test_aue_learning_rate_is_the_official_per_epoch_cosine():
    """aue.py: LambdaLR(cosine_annealing(epoch, epochs, 1, 1e-6 / lr)), stepped once an epoch."""
    attack = AUE(epochs=60)

    def official(epoch):   # utils.cosine_annealing with warmup_steps=0, times the base lr
        lr_min = 1e-6 / attack.lr
        return attack.lr * (lr_min + (1 - lr_min) * 0.5 * (1 + math.cos(epoch / 60 * math.pi)))

    for epoch in (0, 1, 30, 59, 60):
        assert attack.learning_rate(epoch) == pytest.approx(official(epoch), rel=1e-9)


def test_aue_defaults_are_the_official_cifar10_settings():
    a = AUE()
    assert (a.eps, a.steps, a.epochs, a.strength) == (EPS, 5, 60, 0.6) and a.step_size == pytest.approx(EPS / 10)
    assert (a.lr, a.momentum, a.weight_decay, a.batch_size) == (0.1, 0.9, 1e-4, 128)


def augmented_loss(model, images, y, draws=16):
    """CE of ``model`` on ``draws`` fresh strength-0.6 views of ``images``, averaged (fixed seed)."""
    torch.manual_seed(123)
    augment = strength_augmentation(0.6, images.shape[1], tuple(images.shape[-2:]))
    with torch.no_grad():
        return sum(F.cross_entropy(model(augment(images)), y).item() for _ in range(draws)) / draws


def test_aue_noise_minimises_the_loss_through_the_augmentations():
    """Error-minimising noise crafted through the augmentations lowers the augmented loss more
    than the same number of steps crafted on the plain images (EM's noise): AUE's point.
    (Measured: 1.53 clean, 1.26 with AUE's noise, 1.36 with EM's.)"""
    x, y = tiny_images()
    torch.manual_seed(0)
    trained_model = train_supervised(create_model("smallcnn", 3, 4), x, y, TrainConfig(epochs=3, batch_size=16),
                                     torch.device("cpu"), 0).eval()
    attack = AUE(steps=10, step_size=2 / 255, batch_size=32)
    torch.manual_seed(0)
    augment = strength_augmentation(attack.strength, 3, (16, 16))
    aue = attack.noise_pass(trained_model, x, y, torch.zeros_like(x), augment, torch.Generator().manual_seed(0))
    em = torch.zeros_like(x)
    for idx in batches(len(x), 32):
        em[idx] = pgd(trained_model, x[idx], y[idx], em[idx], eps=EPS, step_size=2 / 255, steps=10, descend=True)
    clean = augmented_loss(trained_model, x, y)
    with_aue = augmented_loss(trained_model, x + aue, y)
    with_em = augmented_loss(trained_model, x + em, y)
    assert with_aue < 0.9 * clean
    assert with_aue < with_em


def test_aue_crafts_through_its_strength(ctx):
    """The strength reaches both the surrogate's training and the noise steps: another strength,
    another poison (same seed); the notes say what the surrogate makes of its poisons."""
    x, y = tiny_images()
    weak = AUE.for_preset("smoke", strength=0.0)(x, y, ctx)
    strong = AUE.for_preset("smoke")(x, y, ctx)
    assert not torch.allclose(weak, strong, atol=1e-4)
    notes = ctx.notes["aue"]
    assert notes["surrogate"] == "smallcnn" and 0 <= notes["surrogate_acc_poisoned"] <= 1


def test_aap_defaults_and_step_size_are_the_official_ones():
    a = AAP()
    assert a.targeted and (a.steps, a.strength, a.reference_strength, a.batch_size) == (250, 0.4, 0.4, 128)
    assert a.step_size == pytest.approx(2.5 * EPS / 250)
    assert (a.surrogate_epochs, a.reference_lr, a.reference_weight_decay) == (40, 0.5, 1e-4)
    assert AAP(steps=50).step_size == pytest.approx(2.5 * EPS / 50)
    y = torch.tensor([0, 3, 9])
    assert AAP().adversarial_labels(y, 10).tolist() == [1, 4, 0]
    assert AAP(targeted=False).adversarial_labels(y, 10).tolist() == [0, 3, 9]


def test_aap_reference_model_is_trained_with_its_augmentation(ctx):
    """The reference model is its own cache entry (augmented, its own recipe), not TAP's surrogate."""
    x, y = tiny_images()
    ctx = replace(ctx, train=replace(ctx.train, batch_size=16))
    plain = trained_surrogate(x, y, ctx, epochs=3)
    augmented = trained_surrogate(x, y, ctx, epochs=3, augment=AugmentedTraining(0.4), lr=0.5,
                                  weight_decay=1e-4, nesterov=False, crop_pad=0, flip=False)
    again = trained_surrogate(x, y, ctx, epochs=3, augment=AugmentedTraining(0.4), lr=0.5,
                              weight_decay=1e-4, nesterov=False, crop_pad=0, flip=False)
    differs = [not torch.equal(a, b) for a, b in zip(plain.state_dict().values(), augmented.state_dict().values())]
    assert any(differs)
    for a, b in zip(augmented.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert len(list((ctx.cache_dir / "surrogate").glob("*.pt"))) == 2


@pytest.mark.parametrize("targeted", [True, False])
def test_aap_moves_the_reference_model_where_it_aims(targeted, ctx):
    """Measured: the reference model (100 % on the clean images) puts 0 % of them in the target (or
    a wrong) class and 22 % (23 %) of the poisons, through the augmentations' noise."""
    x, y = tiny_images()
    x = x.transpose(-1, -2).contiguous()       # blobs stacked vertically: a flip keeps the class
    ctx = replace(ctx, train=replace(ctx.train, batch_size=16))
    AAP(steps=20, step_scale=4.0, surrogate_epochs=8, batch_size=64, targeted=targeted, reference_lr=0.1)(x, y, ctx)
    assert ctx.notes["surrogate"]["clean_train_acc"] == 1.0
    notes = ctx.notes["aap"]
    assert notes["surrogate_hit_poisoned"] >= notes["surrogate_hit_clean"] + 0.15
