"""Released poison sets: import the images an attack's authors published, budget-checked."""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from uebench.api import NORMS, Attack, ThreatModel
from uebench.budget import check_budget
from uebench.registry import UserError

NPZ_KEYS = ("x_train", "x")
LABEL_KEYS = ("y_train", "y")


@dataclass
class External(Attack):
    """A poison set made elsewhere, e.g. the TAP or ISS authors' released CIFAR-10 poisons.

    ``path`` is either an ``.npz`` file holding uint8 images (key ``x_train`` or ``x``,
    N×H×W×C; a bare ``.npy`` array also works) in the dataset's original training
    order, or a folder of PNGs named by training index (``123.png``; a ``data/``
    subfolder is looked into, as the released TAP and AR folders are laid out). The
    protected images are looked up by their original training indices, which the
    runner puts in ``ctx.train_indices``.
    ``norm`` and ``eps`` declare the threat model the poisons were made under (default
    L∞ 8/255); the budget guard checks it against the clean images, so a poison set
    made from a differently decoded copy of the data fails loudly instead of silently.

    If the npz also holds labels (``y_train`` or ``y``), they must agree with ours.
    """

    name = "external"
    paper = "released poison set (imported from files)"
    by_name_only = True            # needs path=...: `--attacks all` leaves it out
    path: str = ""
    norm: str = "linf"
    eps: float = 8 / 255

    def __post_init__(self):
        if self.norm not in NORMS:
            raise UserError(f"external: norm must be one of {', '.join(NORMS)}, got {self.norm!r}")

    def threat_model(self) -> ThreatModel:
        return ThreatModel(self.norm, self.eps)

    def generate(self, x, y, ctx):
        if not self.path:
            raise UserError("external: give the poison file with path=... (an .npz or a folder of PNGs)")
        indices = ctx.train_indices
        if indices is None:
            raise UserError("external: the original training indices of the protected images are unknown "
                            "(ctx.train_indices is not set)")
        indices = torch.as_tensor(indices, dtype=torch.long).cpu()
        if indices.shape != (len(x),):
            raise UserError(f"external: {len(indices)} training indices for {len(x)} images")
        path = Path(self.path).expanduser()
        if not path.exists():
            raise UserError(f"external: poison file {path} does not exist")
        images = _read_folder(path, indices) if path.is_dir() else _read_npz(path, indices, y)
        c, h, w = x.shape[1:]
        if images.shape[1:] != (h, w, c):
            raise UserError(f"external: poison images in {path} are {images.shape[1]}×{images.shape[2]}×"
                            f"{images.shape[3]} (H×W×C), the dataset's are {h}×{w}×{c}")
        poisoned = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
        check_budget(x.cpu(), poisoned, self.threat_model())
        ctx.notes["external_source"] = str(path)
        return poisoned


def _read_npz(path: Path, indices: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    labels, key = None, "array"
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):       # a bare .npy array of images
            images = data
        else:
            with data:
                key = next((k for k in NPZ_KEYS if k in data.files), None)
                if key is None:
                    raise UserError(f"external: {path} has no array named {' or '.join(NPZ_KEYS)} "
                                    f"(it has: {', '.join(data.files) or 'nothing'})")
                images = data[key]
                label_key = next((k for k in LABEL_KEYS if k in data.files), None)
                labels = data[label_key] if label_key else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise UserError(f"external: cannot read {path} as an npz file: {err}") from err
    if images.ndim != 4 or images.dtype != np.uint8:
        raise UserError(f"external: {path}[{key}] must be uint8 images N×H×W×C, "
                        f"got {images.dtype} of shape {images.shape}")
    _check_indices(indices, len(images), str(path))
    if labels is not None and len(labels) == len(images):
        theirs = torch.as_tensor(np.asarray(labels)[indices.numpy()], dtype=torch.long)
        if not torch.equal(theirs, y.cpu()):
            wrong = int((theirs != y.cpu()).sum())
            raise UserError(f"external: labels in {path} disagree with the dataset's for {wrong} of "
                            f"{len(y)} images; is the file in the original training order?")
    return images[indices.numpy()]


def _read_folder(path: Path, indices: torch.Tensor) -> np.ndarray:
    if not (path / "0.png").exists() and (path / "data").is_dir():
        path = path / "data"
    missing = [int(i) for i in indices if not (path / f"{int(i)}.png").is_file()]
    if missing:
        raise UserError(f"external: {len(missing)} protected images have no PNG in {path} "
                        f"(e.g. {missing[0]}.png)")
    images = []
    for i in indices.tolist():
        try:
            with Image.open(path / f"{i}.png") as img:
                array = np.asarray(img)
        except OSError as err:
            raise UserError(f"external: cannot read {path / f'{i}.png'}: {err}") from err
        if array.dtype != np.uint8:
            raise UserError(f"external: {path / f'{i}.png'} is {array.dtype}, expected 8-bit")
        images.append(array[:, :, None] if array.ndim == 2 else array)   # greyscale PNG: add C
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise UserError(f"external: PNGs in {path} have different shapes: {sorted(shapes)[:3]}")
    return np.stack(images)


def _check_indices(indices: torch.Tensor, available: int, source: str) -> None:
    outside = indices[(indices < 0) | (indices >= available)]
    if len(outside):
        raise UserError(f"external: {source} holds {available} images but training index "
                        f"{int(outside[0])} is needed")
