"""LSP, AR, OPS and the released-poison importer: budgets, determinism, class structure."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from uebench.attacks.ar import AR
from uebench.attacks.external import External
from uebench.attacks.lsp import LSP
from uebench.attacks.ops import OPS
from uebench.budget import BudgetViolation, check_budget, declared_threat_model
from uebench.context import Context
from uebench.registry import UserError


def grey_images(n=48, channels=3, size=16, classes=4, seed=0):
    """Mid-grey textured images: no perturbation used here reaches 0 or 1, so nothing clips."""
    g = torch.Generator().manual_seed(seed)
    return 0.4 + 0.2 * torch.rand(n, channels, size, size, generator=g), torch.arange(n) % classes


def make_ctx(seed=0, classes=4, shape=(3, 16, 16)):
    return Context(device=torch.device("cpu"), seed=seed, num_classes=classes, image_shape=shape,
                   progress=False, cache_dir=None)


# -- LSP -----------------------------------------------------------------------------------

def test_lsp_uses_its_l2_budget_exactly():
    x, y = grey_images()
    out = LSP()(x, y, make_ctx())
    budget = declared_threat_model(LSP(), (3, 16, 16)).eps
    assert budget == pytest.approx((3 * 16 * 16) ** 0.5 * 6 / 255)
    assert LSP().threat_model((3, 32, 32)).eps == pytest.approx(1.3041, abs=1e-4)   # the paper's CIFAR value
    norms = (out - x).flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, budget), atol=1e-5, rtol=0)
    check_budget(x, out, declared_threat_model(LSP(), (3, 16, 16)))


def test_lsp_is_deterministic_per_seed():
    x, y = grey_images()
    assert torch.equal(LSP()(x, y, make_ctx(0)), LSP()(x, y, make_ctx(0)))
    assert not torch.equal(LSP()(x, y, make_ctx(0)), LSP()(x, y, make_ctx(1)))


def test_lsp_noise_is_constant_on_each_patch():
    x, y = grey_images(size=16)
    delta = LSP(patch_size=8)(x, y, make_ctx()) - x
    blocks = delta.unfold(2, 8, 8).unfold(3, 8, 8)                 # (N, C, 2, 2, 8, 8)
    spread = blocks.amax(dim=(-1, -2)) - blocks.amin(dim=(-1, -2))
    assert spread.max() < 1e-6
    assert (blocks[:, :, 0, 0] - blocks[:, :, 1, 1]).abs().max() > 1e-3   # but differs between patches


def test_lsp_default_noise_is_samplewise_but_linearly_separable_by_class():
    x, y = grey_images(n=80)
    delta = (LSP()(x, y, make_ctx()) - x).flatten(1)
    assert not torch.allclose(delta[0], delta[4])                  # two images of class 0 differ
    centroids = torch.stack([delta[y == k].mean(0) for k in range(4)])
    nearest = torch.cdist(delta, centroids).argmin(1)
    assert torch.equal(nearest, y)                                 # yet their class is plain to see


def test_lsp_classwise_gives_one_pattern_per_class():
    x, y = grey_images()
    delta = LSP(classwise=True)(x, y, make_ctx()) - x
    for k in range(4):
        torch.testing.assert_close(delta[y == k], delta[y == k][:1].expand_as(delta[y == k]), atol=1e-6, rtol=0)
    assert (delta[0] - delta[1]).abs().max() > 1e-3


def test_lsp_shrinks_its_patch_for_tiny_grey_images():
    x, y = grey_images(n=30, channels=1, size=8, classes=3)
    ctx = make_ctx(classes=3, shape=(1, 8, 8))
    out = LSP()(x, y, ctx)
    assert ctx.notes["lsp_patch_size"] == 4       # 1 feature cannot place 3 classes; 4 can
    check_budget(x, out, declared_threat_model(LSP(), (1, 8, 8)))


def test_lsp_handles_imbalanced_classes():
    x, _ = grey_images(n=30)
    y = torch.tensor([0] * 20 + [1] * 7 + [2] * 2 + [3])
    delta = (LSP()(x, y, make_ctx()) - x).flatten(1)
    assert len({tuple(d.tolist()) for d in delta[y == 0]}) == 20  # 20 distinct points for class 0


# -- AR ------------------------------------------------------------------------------------

def test_ar_uses_l2_one_exactly_and_is_deterministic():
    x, y = grey_images()
    out = AR()(x, y, make_ctx())
    norms = (out - x).flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)
    check_budget(x, out, AR().threat_model())
    assert AR().threat_model().norm == "l2" and AR().threat_model().eps == 1.0
    assert torch.equal(out, AR()(x, y, make_ctx()))
    assert not torch.equal(out, AR()(x, y, make_ctx(seed=1)))


def test_ar_noise_is_cancelled_by_its_own_class_filter_only():
    x, y = grey_images(n=40)
    ctx = make_ctx()
    delta = AR()(x, y, ctx) - x
    coeffs = AR().find_coefficients(make_ctx(), 3, (16, 16))      # the same seed draws the same processes
    filters = coeffs.clone()
    filters[:, :, -1, -1] = -1
    # Per-channel filtering (groups) with each class's filter: (N, K, C, H-2, W-2)
    response = torch.stack([F.conv2d(delta, f[:, None], groups=3) for f in filters], dim=1)
    energy = response.abs().flatten(2).sum(2)                      # (N, K)
    assert torch.equal(energy.argmin(1), y)
    own = energy[torch.arange(len(y)), y]
    assert (own < 1e-3 * energy.median()).all()                    # exactly 0 up to float error
    assert not torch.allclose(delta[0], delta[4])                  # sample-wise: fresh start per image


def test_ar_recursion_fills_each_pixel_from_its_causal_window():
    ar = AR(crop=2)
    coeffs = AR().find_coefficients(make_ctx(classes=2), 3, (6, 6))
    signal = ar.ar_noise(coeffs, (6, 6), torch.Generator().manual_seed(0))    # (2, 3, 6, 6)
    i, j = 3, 4
    expected = (signal[:, :, i - 2:i + 1, j - 2:j + 1] * coeffs).sum(dim=(2, 3))
    torch.testing.assert_close(signal[:, :, i, j], expected)


def test_ar_works_on_grey_images_with_few_classes():
    x, y = grey_images(n=30, channels=1, size=8, classes=3)
    ctx = make_ctx(classes=3, shape=(1, 8, 8))
    out = AR()(x, y, ctx)
    check_budget(x, out, AR().threat_model())
    assert ctx.notes["ar_min_response"] > 0


# -- OPS -----------------------------------------------------------------------------------

def changed_positions(x, out):
    return ((out - x).abs().amax(1) > 0)                           # (N, H, W)


def test_ops_changes_one_pixel_per_image_to_one_colour_per_class():
    x, y = grey_images()
    ctx = make_ctx()
    out = OPS()(x, y, ctx)
    changed = changed_positions(x, out)
    assert (changed.flatten(1).sum(1) == 1).all()
    check_budget(x, out, OPS().threat_model())
    for k in range(4):
        where = changed[y == k].nonzero()[:, 1:]                  # (n_k, 2) row, col
        assert (where == where[0]).all()                          # same position in the class
        row, col = where[0].tolist()
        assert [row, col] == ctx.notes["ops_pixels"][k][:2]
        colours = out[y == k][:, :, row, col]
        assert ((colours == 0) | (colours == 1)).all() and (colours == colours[0]).all()
    assert torch.equal(out, OPS()(x, y, make_ctx()))


def test_ops_picks_the_pixel_that_deviates_most_consistently():
    # Every image of class k is black at its own planted position; elsewhere pixels vary.
    # A white pixel there deviates by exactly 1 in every image (std 0): the best score.
    x, y = grey_images(n=40, size=8)
    planted = {0: (1, 6), 1: (7, 0), 2: (4, 4), 3: (0, 3)}
    for k, (r, c) in planted.items():
        x[y == k, :, r, c] = 0.0
    rows, cols, colours = OPS().search(x, y, 4)
    assert [(int(r), int(c)) for r, c in zip(rows, cols)] == [planted[k] for k in range(4)]
    assert (colours == 1).all()


def test_ops_scores_match_a_direct_computation():
    x, y = grey_images(n=24, channels=2, size=4, classes=3)
    scores = OPS.scores(x, y, 3)                                   # (3, 4, 4, 4)
    for k in range(3):
        for v, colour in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            # d over the class's images and channels jointly, as the official pixel_search
            d = (torch.tensor(colour, dtype=torch.float32)[None, :, None, None] - x[y == k]).abs()
            expected = d.mean((0, 1)) / d.std((0, 1), unbiased=False)
            torch.testing.assert_close(scores[k, v].float(), expected, rtol=1e-4, atol=1e-4)


def test_ops_never_gives_two_classes_the_same_shortcut():
    x, y = grey_images(n=40, size=8)
    x[y < 2, :, 2, 2] = 0.0             # classes 0 and 1 both prefer a white pixel at (2, 2)
    rows, cols, colours = OPS().search(x, y, 4)
    shortcut = [(int(r), int(c), tuple(colours[k].int().tolist())) for k, (r, c) in enumerate(zip(rows, cols))]
    assert shortcut[0] == (2, 2, (1, 1, 1))
    assert len(set(shortcut)) == 4


# -- external -------------------------------------------------------------------------------

N_TRAIN = 20


@pytest.fixture
def released():
    """A "released" poison set for a 20-image training set and the 8 images we protect."""
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(40, 216, (N_TRAIN, 8, 8, 3), generator=g, dtype=torch.uint8)
    poison = (clean.int() + torch.randint(-8, 9, clean.shape, generator=g)).to(torch.uint8)
    labels = torch.arange(N_TRAIN) % 4
    indices = torch.tensor([3, 17, 0, 8, 12, 5, 19, 10])
    x = clean[indices].permute(0, 3, 1, 2).float() / 255
    return clean.numpy(), poison.numpy(), labels, indices, x


def external_ctx(indices):
    ctx = make_ctx(shape=(3, 8, 8))
    if indices is not None:
        ctx.train_indices = indices
    return ctx


def one_line_user_error(attack, x, y, ctx) -> str:
    with pytest.raises(UserError) as info:
        attack(x, y, ctx)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_external_round_trips_an_npz(tmp_path, released):
    clean, poison, labels, indices, x = released
    np.savez(tmp_path / "poison.npz", x_train=poison, y_train=labels.numpy())
    out = External(path=str(tmp_path / "poison.npz"))(x, labels[indices], external_ctx(indices))
    expected = torch.from_numpy(poison[indices.numpy()]).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(out, expected)


def test_external_round_trips_a_png_folder(tmp_path, released):
    clean, poison, labels, indices, x = released
    for i in range(N_TRAIN):
        Image.fromarray(poison[i]).save(tmp_path / f"{i}.png")
    out = External(path=str(tmp_path))(x, labels[indices], external_ctx(indices))
    assert torch.equal(out, torch.from_numpy(poison[indices.numpy()]).permute(0, 3, 1, 2).float() / 255)


def test_external_reads_grey_pngs_from_a_data_subfolder(tmp_path, released):
    clean, poison, labels, indices, _ = released
    (tmp_path / "data").mkdir()
    for i in range(N_TRAIN):
        Image.fromarray(poison[i, :, :, 0]).save(tmp_path / "data" / f"{i}.png")
    x = torch.from_numpy(clean[indices.numpy(), :, :, :1]).permute(0, 3, 1, 2).float() / 255
    ctx = Context(device=torch.device("cpu"), seed=0, num_classes=4, image_shape=(1, 8, 8), progress=False)
    ctx.train_indices = indices
    out = External(path=str(tmp_path))(x, labels[indices], ctx)
    assert torch.equal(out[:, 0], torch.from_numpy(poison[indices.numpy(), :, :, 0]).float() / 255)


def test_external_rejects_a_poison_over_its_budget(tmp_path, released):
    clean, poison, labels, indices, x = released
    poison = poison.copy()
    poison[17, 2, 2, 1] = clean[17, 2, 2, 1] + 9          # protected image 1 is training index 17
    np.savez(tmp_path / "poison.npz", x=poison)
    message = one_line_user_error(External(path=str(tmp_path / "poison.npz")), x, labels[indices],
                                  external_ctx(indices))
    assert "L∞" in message and "9/255" in message and "image 1" in message
    # declared with a looser budget, the same file passes
    External(path=str(tmp_path / "poison.npz"), eps=9 / 255)(x, labels[indices], external_ctx(indices))


def test_external_budget_violation_is_the_guard_s(tmp_path, released):
    clean, poison, labels, indices, x = released
    np.savez(tmp_path / "poison.npz", x=np.clip(clean.astype(int) + 20, 0, 255).astype(np.uint8))
    with pytest.raises(BudgetViolation):
        External(path=str(tmp_path / "poison.npz"))(x, labels[indices], external_ctx(indices))


@pytest.mark.parametrize("problem, expected", [
    ("missing file", "does not exist"),
    ("garbage", "cannot read"),
    ("wrong key", "no array named x_train or x"),
    ("wrong image size", "16×16×3"),
    ("float images", "must be uint8"),
    ("too few images", "training index 17 is needed"),
    ("labels disagree", "labels in"),
    ("missing png", "no PNG"),
    ("no indices", "train_indices"),
    ("no path", "path="),
])
def test_external_rejects_bad_input_with_one_line(tmp_path, released, problem, expected):
    clean, poison, labels, indices, x = released
    path = tmp_path / "poison.npz"
    ctx_indices = indices
    if problem == "garbage":
        path.write_bytes(b"not a numpy file at all")
    elif problem == "wrong key":
        np.savez(path, images=poison)
    elif problem == "wrong image size":
        np.savez(path, x_train=np.zeros((N_TRAIN, 16, 16, 3), np.uint8))
    elif problem == "float images":
        np.savez(path, x_train=poison.astype(np.float32) / 255)
    elif problem == "too few images":
        np.savez(path, x_train=poison[:15])
    elif problem == "labels disagree":
        np.savez(path, x_train=poison, y_train=(labels.numpy() + 1) % 4)
    elif problem == "missing png":
        path = tmp_path / "pngs"
        path.mkdir()
        for i in range(N_TRAIN - 1):               # index 19 is protected but missing
            Image.fromarray(poison[i]).save(path / f"{i}.png")
    elif problem == "no indices":
        np.savez(path, x_train=poison)
        ctx_indices = None
    attack = External(path="" if problem == "no path" else str(path))
    message = one_line_user_error(attack, x, labels[indices], external_ctx(ctx_indices))
    assert expected in message


def test_external_declares_its_threat_model():
    assert External().threat_model().norm == "linf"
    assert External().threat_model().eps == pytest.approx(8 / 255)
    assert External(norm="l2", eps=0.5).threat_model().eps == 0.5
    with pytest.raises(UserError, match="norm must be one of"):
        External(norm="l3")
