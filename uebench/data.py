"""Datasets and the protected / reference / test splits.

Every loader returns a :class:`Dataset` of uint8 NHWC arrays. A run then carves a fixed,
seeded, stratified, disjoint clean *reference* split out of the training set (for
defenses that need unprotected data); the rest is the *protected* set that attacks
perturb. The test set is used for evaluation only: no attack or defense receives it.

Specs: ``digits`` (scikit-learn's bundled 8×8 digits, offline), ``fashion-mnist``,
``cifar10``, ``cifar100``, ``svhn`` (torchvision; ``--data-root``; downloaded only with
``--download``), ``npz:PATH`` (uint8 ``x_train y_train x_test y_test``) and
``imagefolder:PATH`` (``train/`` and ``test/`` class folders).
"""
from __future__ import annotations

import copy
import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from uebench.registry import UserError, did_you_mean, safe_segment

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
TORCHVISION_SETS = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "svhn": "SVHN", "fashion-mnist": "FashionMNIST"}
DATASETS = ("digits", "fashion-mnist", "cifar10", "cifar100", "svhn", "npz:PATH", "imagefolder:PATH")
MAX_CLASSES = 1000     # ImageNet's count; a larger label is a mistake (it would allocate a class per number)


class DataNotFound(UserError):
    """A torchvision set is not on disk (``uebench plan`` can still price it from KNOWN_SIZES)."""


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray          # (N, H, W, C) uint8
    y_train: np.ndarray          # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    source: str = ""
    fingerprint: str = field(default="", init=False)
    n_test: int = field(default=0, init=False)   # kept when the test images are left out

    def __post_init__(self):
        if not safe_segment(self.name):          # it names a folder of the results
            raise UserError(f"dataset name {self.name!r} may hold only letters, digits, '-', '_' and '.' (it names "
                            f"a results folder); rename the file or folder it is read from")
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim == 3:                                   # grayscale NHW -> NHW1
                x = x[..., None]
                setattr(self, f"x_{split}", x)
            check_images(self.name, split, x)
            y = integer_labels(self.name, split, y)
            if len(x) != len(y):
                raise UserError(f"{self.name}: x_{split} has {len(x)} images but y_{split} {len(y)} labels")
            setattr(self, f"y_{split}", y)
        for split in ("train", "test"):
            if not len(getattr(self, f"y_{split}")):
                raise UserError(f"{self.name}: the {split} split is empty; a table needs {split} images")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise UserError(f"{self.name}: train images {self.x_train.shape[1:]} and test images "
                            f"{self.x_test.shape[1:]} differ in shape")
        k = len(self.classes)
        if not 2 <= k <= MAX_CLASSES:
            raise UserError(f"{self.name}: {k} class(es); a benchmark needs between 2 and {MAX_CLASSES} classes")
        if self.y_train.max() >= k:
            raise UserError(f"{self.name}: y_train labels must lie in 0..{k - 1}, got {self.y_train.max()}")
        if len(self.y_test) and self.y_test.max() >= k:
            raise UserError(f"{self.name}: y_test has label {self.y_test.max()}, outside the training classes "
                            f"0..{k - 1}; test labels must be classes the training split has")
        digest = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_test, self.y_test):
            digest.update(np.ascontiguousarray(a).tobytes())
        self.fingerprint = digest.hexdigest()[:16]
        self.n_test = len(self.y_test)

    def without_test(self) -> "Dataset":
        """This dataset without its test images (same identity): what a worker keeps while a
        method runs, so no object a method can reach holds the test set (see ``job.test_split``)."""
        part = copy.copy(self)
        # fresh empty arrays: a slice would be a view that keeps the whole test set alive
        part.x_test = np.empty((0, *self.x_test.shape[1:]), self.x_test.dtype)
        part.y_test = np.empty(0, self.y_test.dtype)
        return part

    def check_every_class_trained(self, protected: np.ndarray | None = None) -> None:
        """A table needs training images of every class: a class never trained on makes every
        accuracy meaningless (a single-class set scores 100 %). With ``protected`` (indices of
        the split the victims train on), in that split: the reference split, carved first, can
        take every image of a rare class."""
        labels = self.y_train if protected is None else self.y_train[protected]
        missing = sorted(set(range(self.num_classes)) - set(np.unique(labels).tolist()))
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
            which, fix = ("training", "training images") if protected is None else \
                ("protected", "protected images: lower --n-reference or raise --n-protected")
            raise UserError(f"{self.name}: no {which} image of class {shown} (of 0..{self.num_classes - 1}); "
                            f"every class needs {fix}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        h, w, c = self.x_train.shape[1:]
        return c, h, w

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def identity(self) -> dict:
        """What identifies this data in table ids and cache keys: its content, never where it
        was read from (a clone elsewhere, or CI, must find the same tables and caches)."""
        return {"name": self.name, "fingerprint": self.fingerprint,
                "n_train": len(self.y_train), "n_test": self.n_test, "shape": list(self.image_shape)}


def check_images(name: str, split: str, x: np.ndarray) -> None:
    """uint8 NHWC, and not a channels-first array read as images 1 or 3 pixels high."""
    if x.ndim != 4 or x.dtype != np.uint8:
        raise UserError(f"{name}: x_{split} must be uint8 NHWC images, got {x.dtype} {x.shape}")
    if x.shape[3] > 4 and x.shape[1] in (1, 3):
        raise UserError(f"{name}: x_{split} of shape {x.shape} looks channels-first (N, C, H, W); uebench reads "
                        f"(N, H, W, C): save x.transpose(0, 2, 3, 1)")


def integer_labels(name: str, split: str, y) -> np.ndarray:
    """One whole, non-negative class number per image, below MAX_CLASSES, as int64."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise UserError(f"{name}: y_{split} must hold one class number per image, got shape {y.shape} "
                        f"(one-hot labels? save y.argmax(1))")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)) or y.dtype == bool:
        raise UserError(f"{name}: y_{split} must hold integer class numbers, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating):
        fractional = ~np.isfinite(y) | (y != np.round(y))
        if fractional.any():
            raise UserError(f"{name}: y_{split} holds a label that is not a whole number "
                            f"({y[fractional][0]}); labels must be class numbers 0..K-1")
    if len(y) and y.min() < 0:
        raise UserError(f"{name}: y_{split} holds a negative label ({y.min()}); labels must be 0..K-1")
    if len(y) and y.max() >= MAX_CLASSES:
        raise UserError(f"{name}: y_{split} holds label {y.max()}; uebench takes at most {MAX_CLASSES} classes "
                        f"(labels 0..{MAX_CLASSES - 1})")
    return y.astype(np.int64)


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div_(255)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float NCHW in [0, 1] -> uint8 NHWC (rounded)."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


# -- loaders ---------------------------------------------------------------------------

def load_dataset(spec: str, root: str | os.PathLike | None = None, download: bool = False,
                 train_subset: int | None = None, test_subset: int | None = None,
                 subset_seed: int = 0) -> Dataset:
    """Load a dataset by spec; optionally take a stratified, seeded subset of each split."""
    root = Path(root or os.environ.get("UEBENCH_DATA", "~/.cache/uebench/data")).expanduser()
    if spec == "digits":
        ds = _digits()
    elif spec.startswith("npz:"):
        ds = _npz(Path(spec[4:]).expanduser())
    elif spec.startswith("imagefolder:"):
        ds = _imagefolder(Path(spec[len("imagefolder:"):]).expanduser())
    elif spec in TORCHVISION_SETS:
        ds = _torchvision(spec, root, download)
    else:
        raise UserError(f"unknown dataset {spec!r}: {did_you_mean(spec, [d.split(':')[0] for d in DATASETS])}"
                        f"choose one of {', '.join(DATASETS)}")
    if train_subset or test_subset:
        ds = _subset(ds, train_subset, test_subset, subset_seed)
    return ds


def _digits() -> Dataset:
    """scikit-learn's 1,797 8×8 digits (16 grey levels), split 1,297 train / 500 test (seeded)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = np.round(d.images * (255 / 16)).astype(np.uint8)
    y = d.target.astype(np.int64)
    test = stratified_take(y, 500, seed=0)
    train = np.setdiff1d(np.arange(len(y)), test)
    return Dataset("digits", x[train], y[train], x[test], y[test], [str(i) for i in range(10)],
                   source="sklearn.datasets.load_digits")


def _npz(path: Path) -> Dataset:
    if not path.is_file():
        raise UserError(f"npz file {path} not found; give npz:PATH to an existing file with "
                        f"x_train y_train x_test y_test")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
            if missing:
                raise UserError(f"{path} lacks {', '.join(sorted(missing))}; an npz dataset needs "
                                f"uint8 x_train y_train x_test y_test")
            arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
            classes = [str(c) for c in f["classes"]] if "classes" in f.files else None
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"cannot read {path} as npz ({type(err).__name__}: {err}); "
                        f"is it a complete numpy .npz file?") from err
    name = f"npz-{path.stem}"
    y_train = integer_labels(name, "train", arrays["y_train"])
    k = int(y_train.max()) + 1 if len(y_train) else 0    # the training labels name the classes
    return Dataset(name, **arrays, classes=classes or [str(i) for i in range(k)], source=str(path.resolve()))


def _imagefolder(path: Path) -> Dataset:
    from PIL import Image
    from torchvision.datasets import ImageFolder
    if not (path / "train").is_dir() or not (path / "test").is_dir():
        raise UserError(f"imagefolder:{path} needs train/ and test/ folders with one sub-folder per class")
    splits, classes = {}, None
    for split in ("train", "test"):
        folder = ImageFolder(str(path / split), loader=lambda p: Image.open(p).convert("RGB"))
        if classes is None:
            classes = folder.classes
        elif folder.classes != classes:
            raise UserError(f"imagefolder:{path}: train/ and test/ have different class folders")
        images = [np.asarray(folder.loader(p)) for p, _ in folder.samples]
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise UserError(f"imagefolder:{path}/{split}: images differ in size {sorted(shapes)[:3]}; "
                            f"resize them to one size first")
        splits[split] = (np.stack(images), np.array(folder.targets))
    return Dataset(f"imagefolder-{path.name}", splits["train"][0], splits["train"][1],
                   splits["test"][0], splits["test"][1], classes, source=str(path.resolve()))


def _torchvision(spec: str, root: Path, download: bool) -> Dataset:
    import torchvision.datasets as tvd
    if spec == "fashion-mnist" and not (root / "FashionMNIST" / "raw").is_dir() and DEBIAN_FASHION_MNIST.is_dir():
        return _idx_folder(DEBIAN_FASHION_MNIST, "fashion-mnist")
    cls = getattr(tvd, TORCHVISION_SETS[spec])
    try:
        if spec == "svhn":
            train, test = cls(str(root), split="train", download=download), cls(str(root), split="test", download=download)
            xs = [np.transpose(d.data, (0, 2, 3, 1)) for d in (train, test)]
            ys, classes = [d.labels for d in (train, test)], [str(i) for i in range(10)]
        else:
            train, test = cls(str(root), train=True, download=download), cls(str(root), train=False, download=download)
            xs = [np.asarray(d.data) for d in (train, test)]
            ys, classes = [np.asarray(d.targets) for d in (train, test)], list(train.classes)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise DataNotFound(f"{spec} not found under {root}: pass --download to fetch it (needs network), or "
                           f"--data-root to where torchvision's files are ({err})") from err
    except OSError as err:       # download attempted without network
        raise UserError(f"could not download {spec} to {root} ({type(err).__name__}: {err}); "
                        f"without network, copy torchvision's files there or use npz:PATH") from err
    return Dataset(spec, xs[0], ys[0], xs[1], ys[1], classes, source=f"torchvision:{root}")


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _idx_folder(folder: Path, name: str) -> Dataset:
    def find(stem: str) -> Path:
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                return candidate
        raise UserError(f"{folder} lacks {stem}(.gz); reinstall the dataset files")
    x_train, y_train = _read_idx(find("train-images-idx3-ubyte")), _read_idx(find("train-labels-idx1-ubyte"))
    x_test, y_test = _read_idx(find("t10k-images-idx3-ubyte")), _read_idx(find("t10k-labels-idx1-ubyte"))
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    return Dataset(name, x_train, y_train, x_test, y_test, classes, source=str(folder))


# -- subsets and splits ----------------------------------------------------------------

def stratified_take(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` items spread evenly over the classes (sorted), chosen with ``seed``."""
    if n > len(y):
        raise UserError(f"asked for {n} images but the split has only {len(y)}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    quota = np.floor(counts / counts.sum() * n).astype(int)
    for i in np.argsort(-(counts / counts.sum() * n - quota))[: n - quota.sum()]:  # largest remainders
        quota[i] += 1
    picked = [rng.permutation(np.flatnonzero(y == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked))


def _subset(ds: Dataset, n_train: int | None, n_test: int | None, seed: int) -> Dataset:
    tr = stratified_take(ds.y_train, n_train, seed) if n_train and n_train < len(ds.y_train) else slice(None)
    te = stratified_take(ds.y_test, n_test, seed) if n_test and n_test < len(ds.y_test) else slice(None)
    if isinstance(tr, slice) and isinstance(te, slice):
        return ds
    name = subset_name(ds.name, None if isinstance(tr, slice) else n_train, None if isinstance(te, slice) else n_test)
    return Dataset(name, ds.x_train[tr], ds.y_train[tr], ds.x_test[te], ds.y_test[te], ds.classes, ds.source)


def subset_name(name: str, n_train: int | None, n_test: int | None) -> str:
    """The name of a dataset's subset of ``n_train`` / ``n_test`` images (None: the whole split)."""
    return name + (f"-train{n_train}" if n_train else "") + (f"-test{n_test}" if n_test else "")


# The torchvision sets' sizes, for planning before they are downloaded (plan.KnownSizes):
# (training images, test images, image shape C×H×W, classes).
KNOWN_SIZES = {"cifar10": (50_000, 10_000, (3, 32, 32), 10), "cifar100": (50_000, 10_000, (3, 32, 32), 100),
               "svhn": (73_257, 26_032, (3, 32, 32), 10), "fashion-mnist": (60_000, 10_000, (1, 28, 28), 10)}


@dataclass(frozen=True)
class Splits:
    protected: np.ndarray   # indices into the training set that attacks perturb
    reference: np.ndarray   # clean indices a defense may use, disjoint from protected


def make_splits(y_train: np.ndarray, n_reference: int, n_protected: int | None = None,
                seed: int = 0) -> Splits:
    """Carve a stratified reference split, then take the protected set from the rest.

    The split depends on ``seed`` only (not on the cell seed), so every cell of a table
    trains on the same protected images.
    """
    reference = stratified_take(y_train, n_reference, seed) if n_reference else np.array([], dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(y_train)), reference)
    if n_protected is not None and n_protected < len(rest):
        rest = rest[stratified_take(y_train[rest], n_protected, seed + 1)]
    return Splits(protected=rest, reference=reference)
