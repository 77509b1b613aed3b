"""Every dataset loader, on tiny files written in each format, and the splits."""
from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from uebench import data
from uebench.data import load_dataset, make_splits, stratified_take
from uebench.registry import UserError

RNG = np.random.default_rng(0)


def _images(n, h=32, w=32, c=3):
    return RNG.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def _pickle(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


@pytest.fixture
def no_md5(monkeypatch):
    """torchvision checks the md5 of the real archives; our fabricated files cannot match."""
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.svhn as svhn
    for module in (cifar, svhn):
        monkeypatch.setattr(module, "check_integrity", lambda *args, **kwargs: True)


def test_cifar10_format(tmp_path, no_md5):
    base = tmp_path / "cifar-10-batches-py"
    x = _images(12)
    for i in range(1, 6):
        part = x[(i - 1) * 2:(i - 1) * 2 + 2]
        _pickle(base / f"data_batch_{i}", {"data": part.transpose(0, 3, 1, 2).reshape(2, -1), "labels": [i % 10] * 2})
    _pickle(base / "test_batch", {"data": x[10:].transpose(0, 3, 1, 2).reshape(2, -1), "labels": [3, 4]})
    _pickle(base / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    ds = load_dataset("cifar10", root=tmp_path)
    assert ds.x_train.shape == (10, 32, 32, 3) and ds.x_test.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(ds.x_train[:2], x[:2])
    assert ds.y_test.tolist() == [3, 4] and ds.classes[0] == "c0"


def test_cifar100_format(tmp_path, no_md5):
    base = tmp_path / "cifar-100-python"
    x = _images(4)
    _pickle(base / "train", {"data": x[:3].transpose(0, 3, 1, 2).reshape(3, -1), "fine_labels": [0, 50, 99]})
    _pickle(base / "test", {"data": x[3:].transpose(0, 3, 1, 2).reshape(1, -1), "fine_labels": [7]})
    _pickle(base / "meta", {"fine_label_names": [f"f{i}" for i in range(100)]})
    ds = load_dataset("cifar100", root=tmp_path)
    assert ds.num_classes == 100 and ds.y_train.tolist() == [0, 50, 99]
    np.testing.assert_array_equal(ds.x_test[0], x[3])


def test_svhn_format(tmp_path, no_md5):
    from scipy.io import savemat
    x = _images(5)
    for split, part, labels in (("train", x[:3], [10, 1, 2]), ("test", x[3:], [5, 10])):
        savemat(tmp_path / f"{split}_32x32.mat", {"X": part.transpose(1, 2, 3, 0), "y": np.array(labels)[:, None]})
    ds = load_dataset("svhn", root=tmp_path)
    assert ds.y_train.tolist() == [0, 1, 2]          # SVHN's label 10 is the digit 0
    np.testing.assert_array_equal(ds.x_train[1], x[1])


def _idx(path, array, gz=False):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    (gzip.open if gz else open)(path, "wb").write(blob)


def test_fashion_mnist_torchvision_layout(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    x = RNG.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    _idx(raw / "train-images-idx3-ubyte", x[:4]); _idx(raw / "train-labels-idx1-ubyte", np.array([0, 1, 2, 9]))
    _idx(raw / "t10k-images-idx3-ubyte", x[4:]); _idx(raw / "t10k-labels-idx1-ubyte", np.array([3, 4]))
    ds = load_dataset("fashion-mnist", root=tmp_path)
    assert ds.x_train.shape == (4, 28, 28, 1) and ds.y_train.tolist() == [0, 1, 2, 9]
    np.testing.assert_array_equal(ds.x_test[1, ..., 0], x[5])


def test_fashion_mnist_debian_gz_layout(tmp_path, monkeypatch):
    folder = tmp_path / "debian"
    x = RNG.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    _idx(folder / "train-images-idx3-ubyte.gz", x[:2], gz=True); _idx(folder / "train-labels-idx1-ubyte.gz", np.array([5, 6]), gz=True)
    _idx(folder / "t10k-images-idx3-ubyte.gz", x[2:], gz=True); _idx(folder / "t10k-labels-idx1-ubyte.gz", np.array([7]), gz=True)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", folder)
    ds = load_dataset("fashion-mnist", root=tmp_path / "empty")
    assert ds.y_train.tolist() == [5, 6] and ds.source == str(folder)
    np.testing.assert_array_equal(ds.x_test[0, ..., 0], x[2])


def test_npz_and_its_errors(tmp_path):
    path = tmp_path / "set.npz"
    np.savez(path, x_train=_images(8, 8, 8), y_train=np.arange(8) % 2, x_test=_images(2, 8, 8), y_test=[0, 1])
    ds = load_dataset(f"npz:{path}")
    assert ds.name == "npz-set" and ds.num_classes == 2 and ds.image_shape == (3, 8, 8)
    with pytest.raises(UserError, match="not found"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(UserError, match="cannot read .*corrupt.npz"):
        load_dataset(f"npz:{tmp_path / 'corrupt.npz'}")
    np.savez(tmp_path / "partial.npz", x_train=_images(2))
    with pytest.raises(UserError, match="lacks x_test, y_test, y_train"):
        load_dataset(f"npz:{tmp_path / 'partial.npz'}")
    np.savez(tmp_path / "floats.npz", x_train=np.zeros((2, 4, 4, 3)), y_train=[0, 1],
             x_test=np.zeros((1, 4, 4, 3)), y_test=[0])
    with pytest.raises(UserError, match="must be uint8"):
        load_dataset(f"npz:{tmp_path / 'floats.npz'}")


def test_imagefolder(tmp_path):
    for split, n in (("train", 3), ("test", 1)):
        for cls in ("cat", "dog"):
            folder = tmp_path / "folder" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_images(1, 16, 16)[0]).save(folder / f"{i}.png")
    ds = load_dataset(f"imagefolder:{tmp_path / 'folder'}")
    assert ds.classes == ["cat", "dog"] and ds.x_train.shape == (6, 16, 16, 3) and ds.y_test.tolist() == [0, 1]
    with pytest.raises(UserError, match="needs train/ and test/"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_digits_is_offline_and_fixed():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.x_train.shape == (1297, 8, 8, 1) and len(a.y_test) == 500
    assert a.fingerprint == b.fingerprint


def test_missing_torchvision_dataset_says_what_to_do(tmp_path):
    with pytest.raises(UserError, match="cifar10 not found under .*--download"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(UserError, match="unknown dataset 'cifar'.*did you mean cifar10"):
        load_dataset("cifar")


def test_splits_are_stratified_disjoint_and_seeded():
    y = np.repeat(np.arange(10), 100)
    s = make_splits(y, n_reference=200, n_protected=500, seed=0)
    assert not set(s.protected) & set(s.reference)
    assert np.bincount(y[s.reference]).tolist() == [20] * 10
    assert np.bincount(y[s.protected]).tolist() == [50] * 10
    again = make_splits(y, n_reference=200, n_protected=500, seed=0)
    np.testing.assert_array_equal(s.protected, again.protected)
    other = make_splits(y, n_reference=200, seed=1)
    assert set(other.reference) != set(s.reference)
    assert len(stratified_take(np.array([0, 0, 0, 1]), 2, seed=0)) == 2


# -- the validator, over generated bad arrays -------------------------------------------------

def _good_arrays(rng, k, n_per_class, h, w, c):
    y_train = np.repeat(np.arange(k), n_per_class)
    return dict(x_train=rng.integers(0, 256, (len(y_train), h, w, c), dtype=np.uint8), y_train=y_train,
                x_test=rng.integers(0, 256, (k, h, w, c), dtype=np.uint8), y_test=np.arange(k))


def _spoil(arrays, fault, rng):
    """Each fault is a way real datasets go wrong; every one must be refused."""
    a = dict(arrays)
    y, k = a["y_train"], int(a["y_train"].max()) + 1
    if fault == "single class":
        a["y_train"], a["y_test"] = np.zeros_like(y), np.zeros_like(a["y_test"])
    elif fault == "fractional label":
        a["y_train"] = y.astype(np.float64)
        a["y_train"][rng.integers(len(y))] += 0.5
    elif fault == "huge label":
        a["y_train"] = y.copy()
        a["y_train"][rng.integers(len(y))] = int(rng.integers(1000, 10**12))
    elif fault == "negative label":
        a["y_train"] = y.copy()
        a["y_train"][rng.integers(len(y))] = -int(rng.integers(1, 100))
    elif fault == "test label not trained":
        a["y_test"] = a["y_test"].copy()
        a["y_test"][rng.integers(len(a["y_test"]))] = k + int(rng.integers(0, 5))
    elif fault == "class without training images":
        a["classes"] = np.array([f"c{i}" for i in range(k + 1)])
    elif fault == "channels first":
        a["x_train"], a["x_test"] = (x.transpose(0, 3, 1, 2) for x in (a["x_train"], a["x_test"]))
    elif fault == "one-hot labels":
        a["y_train"] = np.eye(k, dtype=np.int64)[y]
    elif fault == "float images":
        a["x_train"] = a["x_train"] / 255.0
    elif fault == "string labels":
        a["y_train"] = y.astype(str)
    return a


FAULTS = ["single class", "fractional label", "huge label", "negative label", "test label not trained",
          "class without training images", "channels first", "one-hot labels", "float images", "string labels"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fault=st.sampled_from(FAULTS), k=st.integers(2, 12), n_per_class=st.integers(1, 4),
       size=st.integers(5, 12), channels=st.sampled_from([1, 3]), seed=st.integers(0, 2**32 - 1))
def test_validator_refuses_every_bad_dataset_in_one_line(tmp_path, fault, k, n_per_class, size, channels, seed):
    rng = np.random.default_rng(seed)
    good = _good_arrays(rng, k, n_per_class, size, size + 1, channels)
    path = tmp_path / "set.npz"
    np.savez(path, **good)
    ds = load_dataset(f"npz:{path}")                # the unspoilt arrays load and train
    ds.check_every_class_trained()
    assert ds.num_classes == k

    np.savez(path, **_spoil(good, fault, rng))
    with pytest.raises(UserError) as caught:
        load_dataset(f"npz:{path}").check_every_class_trained()
    message = str(caught.value)
    assert "\n" not in message and message.startswith("npz-set: "), message


@pytest.mark.parametrize("fault, message", [
    ("single class", "1 class(es); a benchmark needs between 2 and 1000"),
    ("fractional label", "not a whole number (0.5)"),
    ("huge label", "at most 1000 classes"),
    ("test label not trained", "outside the training classes 0..3"),
    ("class without training images", "no training image of class 4 (of 0..4)"),
    ("channels first", "looks channels-first (N, C, H, W)"),
    ("one-hot labels", "one-hot labels?"),
])
def test_each_dataset_fault_says_what_is_wrong(tmp_path, fault, message):
    rng = np.random.default_rng(0)
    arrays = _spoil(_good_arrays(rng, 4, 3, 8, 8, 3), fault, np.random.default_rng(1))
    if fault == "fractional label":
        arrays["y_train"] = np.array([0, 0.5, 1, 1, 2, 2, 3, 3, 0, 1, 2, 3])
    np.savez(tmp_path / "set.npz", **arrays)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        load_dataset(f"npz:{tmp_path / 'set.npz'}").check_every_class_trained()
