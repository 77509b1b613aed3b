"""Cutout, Mixup and CutMix (defenses/mixing.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from uebench.defenses.mixing import CutMix, Cutout, Mixup


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


def mixing(cls, n_classes: int, **kwargs):
    """A Mixup or CutMix ready to mix labels of ``n_classes`` classes (what fit() tells it)."""
    defense = cls(**kwargs)
    defense._num_classes = n_classes
    return defense


def distinct_constant_images(n: int = 512, size: int = 32):
    """n flat images, each of its own grey value and its own class: a pixel names its source."""
    x = (torch.arange(n, dtype=torch.float32) / n)[:, None, None, None].expand(n, 3, size, size).contiguous()
    return x, torch.arange(n)


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
