"""Unit tests of the countermeasures: each transform does what its paper says, on crafted batches."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from uebench.defenses.adversarial_training import AdversarialTraining
from uebench.defenses.iss import JPEG, BitDepthReduction, GaussianBlur, Grayscale, MedianFilter
from uebench.defenses.mixing import Cutout, CutMix, Mixup
from uebench.defenses.ueraser import UEraser, UEraserLite, UEraserMax
from uebench.models import create_model
from uebench.train import TrainConfig, train_supervised

from conftest import tiny_images


def distinct_label_batch(n: int = 8, size: int = 16, seed: int = 0):
    """n random images, each with its own class, and their one-hot labels, so a mixed
    label names both partners and the weight of each."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    return x, F.one_hot(torch.arange(n), n).float()


def partner_and_weight(y_mixed: torch.Tensor):
    """For each row of mixed one-hot labels of distinct classes: the own weight λ and the partner."""
    n = len(y_mixed)
    own = y_mixed[torch.arange(n), torch.arange(n)]
    others = y_mixed.clone()
    others[torch.arange(n), torch.arange(n)] = -1
    return own, others.argmax(1)


# -- mixing -------------------------------------------------------------------------

@pytest.mark.parametrize("size, side", [(32, 16), (16, 8), (64, 32)])
def test_cutout_zeroes_one_square_scaled_with_the_image(size, side):
    torch.manual_seed(0)
    x = torch.ones(256, 3, size, size)
    y = torch.arange(256) % 10
    out, y_out = Cutout().augment(x, y)
    assert torch.equal(y_out, y)
    zero = out == 0
    assert torch.equal(zero, zero[:, :1].expand_as(zero)), "the same pixels must be cut in every channel"
    mask = zero[:, 0]
    rows, cols = mask.any(2), mask.any(1)
    assert torch.equal(mask, rows[:, :, None] & cols[:, None, :]), "the cut region must be a rectangle"
    n_rows, n_cols = rows.sum(1), cols.sum(1)
    # the centre lies inside the image, so at least half the square survives the border clip
    assert n_rows.min() >= side - side // 2 and n_rows.max() == side
    assert n_cols.min() >= side - side // 2 and n_cols.max() == side
    assert ((n_rows == side) & (n_cols == side)).any()
    assert torch.equal(out[~zero], x[~zero])
    assert len({tuple(m.nonzero()[0].tolist()) for m in mask}) > 10, "each image gets its own square"


def mixing(cls, n_classes: int, **kwargs):
    """A Mixup or CutMix ready to mix labels of ``n_classes`` classes (what fit() tells it)."""
    defense = cls(**kwargs)
    defense._num_classes = n_classes
    return defense


def distinct_constant_images(n: int = 512, size: int = 32):
    """n flat images, each of its own grey value and its own class: a pixel names its source."""
    x = (torch.arange(n, dtype=torch.float32) / n)[:, None, None, None].expand(n, 3, size, size).contiguous()
    return x, torch.arange(n)


def test_mixup_mixes_each_image_with_its_own_weight_and_partner():
    """APBench (kornia's RandomMixUpV2): one λ and one random partner per image, not per batch."""
    torch.manual_seed(0)
    x, _ = distinct_label_batch(n=64)
    y = torch.arange(64)
    out, y_out = mixing(Mixup, 64).augment(x, y)
    assert torch.allclose(y_out.sum(1), torch.ones(len(y)))
    assert (y_out >= 0).all() and (y_out <= 1).all()
    lam, partner = partner_and_weight(y_out)
    mixed = partner != torch.arange(64)          # an image drawn as its own partner stays itself
    expected = lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[partner]
    assert torch.allclose(out[mixed], expected[mixed], atol=1e-6)
    assert lam[mixed].unique().numel() > 32, "every image draws its own λ"
    assert partner[mixed].unique().numel() > 16, "partners are drawn per image"


def test_mixup_weights_are_uniform_on_zero_one():
    """λ ~ U(0, 1) (Beta(1, 1)): mean 1/2, and both tails are used."""
    torch.manual_seed(0)
    x, y = distinct_constant_images(n=512, size=4)
    lams, _ = partner_and_weight(mixing(Mixup, 512).augment(x, y)[1])
    assert abs(lams.mean().item() - 0.5) < 0.05
    assert (lams < 0.1).sum() > 20 and (lams > 0.9).sum() > 20


def test_cutmix_pastes_one_box_per_image_inside_the_image_and_weights_labels_by_its_area():
    """APBench (kornia's RandomCutMixV2): each image gets its own box, always inside the
    image, from a random partner; the label weight is the pasted area. The box-area share
    averages about 0.48 (one box per batch clipped at the border, as before, gave 0.30)."""
    torch.manual_seed(3)
    x, y = distinct_constant_images()
    areas = []
    for _ in range(4):
        out, y_out = mixing(CutMix, len(y)).augment(x, y)
        own, partner = partner_and_weight(y_out)
        mixed = partner != y
        changed = (out != x).any(1)                                      # (n, h, w)
        rows, cols = changed.any(2), changed.any(1)
        assert torch.equal(changed, rows[:, :, None] & cols[:, None, :]), "the pasted region must be one box"
        source = (out[:, 0] * len(y)).round().long()                    # which image each pixel came from
        assert torch.equal(source[changed], partner[:, None, None].expand_as(changed)[changed])
        area = changed.float().mean((1, 2))
        assert torch.allclose(1 - own[mixed], area[mixed], atol=1e-6)
        assert len({tuple(m.nonzero()[0].tolist()) for m in changed[mixed] if m.any()}) > 100, "a box per image"
        areas.append(area[mixed])
    mean_area = torch.cat(areas).mean().item()
    assert 0.44 <= mean_area <= 0.52, f"mean pasted share {mean_area:.3f}"


def test_label_mixing_needs_the_number_of_classes_for_hard_labels():
    x, _ = distinct_label_batch()
    with pytest.raises(RuntimeError, match="number of classes"):
        Mixup().augment(x, torch.arange(len(x)))


def test_mixing_is_reproducible_from_the_global_seed():
    x, y = distinct_constant_images(n=64, size=8)
    for cls in (Mixup, CutMix):
        draws = []
        for _ in range(2):
            torch.manual_seed(7)               # the trainer seeds the global generator per cell
            draws.append(mixing(cls, 64).augment(x, y))
        assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])


# -- image shortcut squeezing and pixel squeezes -------------------------------------

def test_grayscale_is_pillows_fixed_point_luma_of_the_uint8_image():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = Grayscale().squeeze(x)
    assert out.shape == x.shape
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    pixels = (x * 255).round()
    luma = torch.floor((19595 * pixels[:, 0] + 38470 * pixels[:, 1] + 7471 * pixels[:, 2] + 32768) / 65536)
    assert torch.equal((out[:, 0] * 255).round(), luma)
    gray = torch.rand(4, 1, 8, 8)
    assert torch.equal(Grayscale().squeeze(gray), gray)


def test_jpeg_changes_images_within_shape_and_range(tiny):
    x, _ = tiny
    out = JPEG().squeeze(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert (out - x).abs().mean() > 2 / 255, "quality 10 must visibly change the images"
    gray = x[:, :1]
    gray_out = JPEG().squeeze(gray)
    assert gray_out.shape == gray.shape and (gray_out - gray).abs().mean() > 2 / 255


def test_jpeg_removes_high_frequency_noise_but_not_low_frequency_noise():
    """ISS's reading: JPEG erases per-pixel (high-frequency) shortcuts, not smooth ones."""
    x, _ = tiny_images(size=32)
    g = torch.Generator().manual_seed(1)
    per_pixel = (torch.randint(0, 2, x.shape, generator=g) * 2 - 1) * 8 / 255
    smooth = F.interpolate(torch.rand(len(x), 3, 4, 4, generator=g) * 2 - 1, size=(32, 32),
                           mode="bilinear", align_corners=True) * 8 / 255
    clean = JPEG().squeeze(x)

    def survival(noise):
        return ((JPEG().squeeze((x + noise).clamp(0, 1)) - clean).norm() / noise.norm()).item()

    assert survival(per_pixel) < 0.6
    assert survival(per_pixel) < 0.5 * survival(smooth)


def test_bit_depth_reduction_posterizes_to_the_top_two_bits():
    """APBench's RandomPosterize(bits=2): 0/64/128/192, never rounding up (white becomes 192)."""
    x = torch.arange(256, dtype=torch.float32).div(255).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    out = (BitDepthReduction().squeeze(x) * 255).round()
    assert out.unique().tolist() == [0, 64, 128, 192]
    assert torch.equal(out, torch.div(x * 255, 64, rounding_mode="floor").round() * 64)
    assert (out <= (x * 255).round()).all()


def impulse(size: int = 9, background: float = 0.0, value: float = 1.0) -> torch.Tensor:
    x = torch.full((1, 3, size, size), background)
    x[..., size // 2, size // 2] = value
    return x


def test_median_filter_replicates_the_border_as_opencv():
    """cv2.medianBlur (ISS) repeats the edge pixels; reflecting would give 0 in this corner."""
    x = torch.zeros(1, 3, 5, 5)
    x[..., 0, :2] = 1.0                  # a bright top edge at the left corner
    assert MedianFilter().squeeze(x)[0, 0, 0, 0] == 1.0


def test_median_filter_removes_an_isolated_impulse_and_keeps_flat_images():
    assert torch.equal(MedianFilter().squeeze(impulse()), torch.zeros(1, 3, 9, 9))
    assert torch.allclose(MedianFilter().squeeze(impulse(background=0.4)), torch.full((1, 3, 9, 9), 0.4))
    flat = torch.full((2, 3, 8, 8), 0.7)
    assert torch.equal(MedianFilter().squeeze(flat), flat), "corners must not turn black"
    edge = torch.zeros(1, 1, 8, 8)
    edge[..., 4:] = 1
    assert torch.equal(MedianFilter().squeeze(edge), edge), "a median keeps a straight edge"


def test_gaussian_blur_spreads_an_impulse_as_its_kernel_and_is_near_identity_at_sigma_0_1():
    x = impulse()
    out = GaussianBlur(sigma=1.0).squeeze(x)
    centre = out[0, 0, 3:6, 3:6]
    g = torch.exp(-torch.tensor([1.0, 0.0, 1.0]) ** 2 / 2)
    kernel = torch.outer(g, g) / torch.outer(g, g).sum()
    assert torch.allclose(centre, kernel, atol=1e-5)
    assert torch.allclose(out.sum(), x.sum(), atol=1e-4), "blurring conserves the total intensity"
    assert torch.allclose(GaussianBlur().squeeze(x), x, atol=1e-6), "APBench's σ 0.1 is nearly the identity"


@pytest.mark.parametrize("defense", [Grayscale(), JPEG(), BitDepthReduction(), GaussianBlur(), MedianFilter()],
                         ids=lambda d: d.name)
def test_purify_applies_the_squeeze_in_chunks_and_notes_it(defense, tiny, ctx, monkeypatch):
    x, y = tiny
    monkeypatch.setattr(type(defense), "chunk_size", 5)
    out = defense.purify(x, y, (x, y), ctx)
    assert torch.allclose(out, defense.squeeze(x), atol=1e-6)
    assert defense.name in ctx.notes["purify"]


# -- adversarial training ------------------------------------------------------------

def test_at_defaults_follow_the_papers():
    linf, l2 = AdversarialTraining(), AdversarialTraining(norm="l2")
    assert math.isclose(linf.eps, 8 / 255) and math.isclose(linf.step_size, 2 / 255) and linf.steps == 10
    assert math.isclose(l2.eps, 0.5) and math.isclose(l2.step_size, 0.125)
    with pytest.raises(ValueError):
        AdversarialTraining(norm="l1")


@pytest.fixture(scope="module")
def fitted_model():
    """A small CNN fitted to the tiny set (clean loss near 0), left in train mode."""
    x, y = tiny_images()
    cfg = TrainConfig(epochs=8, batch_size=16, flip=False, crop_pad=0)
    model = train_supervised(create_model("smallcnn", 3, 4), x, y, cfg, torch.device("cpu"), seed=0)
    model.zero_grad(set_to_none=True)
    return model.train()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_at_inner_attack_raises_the_loss_and_stays_in_the_ball(norm, tiny, fitted_model):
    torch.manual_seed(0)
    x, y = tiny
    model = fitted_model
    defense = AdversarialTraining(norm=norm, steps=5)
    x_adv = defense.attack(model, x, y)
    assert model.training, "the model's mode must be restored"
    assert all(p.grad is None for p in model.parameters()), "the attack must not touch parameter gradients"
    delta = x_adv - x
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    if norm == "linf":
        assert delta.abs().max() <= defense.eps + 1e-6
    else:
        assert delta.flatten(1).norm(dim=1).max() <= defense.eps + 1e-5
    model.eval()
    try:
        with torch.no_grad():
            clean, adv = F.cross_entropy(model(x), y), F.cross_entropy(model(x_adv), y)
            noisy = F.cross_entropy(model((x + delta[torch.randperm(len(x))]).clamp(0, 1)), y)
    finally:
        model.train()
    assert adv > 10 * clean
    assert adv > 2 * noisy, "PGD must beat a perturbation of the same size in a random direction"


# -- UEraser -------------------------------------------------------------------------

def test_ueraser_repeat_epochs_scale_with_the_budget():
    assert UEraser().repeat_epochs_for(300) == 50
    assert UEraser().repeat_epochs_for(15) == 3
    assert UEraserLite().repeat_epochs_for(15) == 0
    assert UEraserMax().repeat_epochs_for(15) == 15
    d = UEraser()
    d.repeat_epochs = d.repeat_epochs_for(12)
    assert [d.copies_at(e) for e in (0, 1, 2, 11)] == [5, 5, 1, 1]


def test_ueraser_chain_keeps_shape_and_range_and_changes_images(tiny):
    x, _ = tiny
    torch.manual_seed(0)
    for defense in (UEraser(), UEraser(jpeg_quality=10)):
        out = defense.erase(x)
        assert out.shape == x.shape and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1
        assert (out - x).abs().mean() > 0.02
    assert UEraser().erase(x[:, :1]).shape == x[:, :1].shape


def test_ueraser_max_over_copies_loss_exceeds_the_single_copy_loss(tiny):
    x, y = tiny
    torch.manual_seed(0)
    model = create_model("smallcnn", 3, 4).eval()
    defense = UEraser()
    defense.repeat_epochs = 1
    with torch.no_grad():
        for seed in range(4):
            torch.manual_seed(seed)
            max_over_five = defense.loss(model, x, y, epoch=0)
            torch.manual_seed(seed)
            single = defense.loss(model, x, y, epoch=1)   # past the repeat epochs: K = 1
            assert max_over_five >= single
