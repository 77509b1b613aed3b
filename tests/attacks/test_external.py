"""External: released poison sets imported from files (attacks/external.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_ctx
from uebench.attacks.external import External
from uebench.budget import BudgetViolation
from uebench.context import Context
from uebench.registry import UserError

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
