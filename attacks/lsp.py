"""Linearly separable synthetic perturbations (LSP): a shortcut drawn from a toy dataset."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from uebench.api import Attack, ThreatModel
from uebench.release import on_uint8_grid


@dataclass
class LSP(Attack):
    """Yu et al., "Availability Attacks Create Shortcuts", KDD 2022.

    A toy classification set with one Gaussian cluster per class, far apart
    (``sklearn.datasets.make_classification``, ``class_sep`` 10), is drawn with one
    feature per (grid cell, channel) of a coarse grid over the image. Each image gets a
    point of its own class, each grid cell is blown up to a ``patch_size`` square patch,
    and the resulting noise is scaled to the L2 norm √(C·H·W)·``eps`` (1.30 on CIFAR at
    ε = 6/255): a linearly separable pattern the network learns instead of the images.

    Defaults (paper and official code): ``patch_size`` 8 (4×4 grid on CIFAR), ``eps``
    6/255 (per-pixel RMS scale), ``class_sep`` 10, one fresh point per image. The L2
    budget depends on the image size, so ``threat_model`` takes ``image_shape``.

    The official export: the noise is added to the images in float64 (x/255 + δ) and the
    sum is stored as clip(255·(x/255 + δ), 0, 255) truncated by numpy's ``astype(np.uint8)``
    (``cifar_train.py``). LSP releases its images that way itself (:func:`exported`, the same
    float64 arithmetic; ``release = "truncate"`` then passes the levels through): truncation
    shifts every image by −0.5/255 on average and can take a negative δ one level past the L2
    budget, which the budget guard allows for a truncated release. The generic rule would read a
    value within 10⁻³ of a level as that level; the official export does not.

    Deviations:
      - ``classwise=True`` (not in the paper) gives every image of a class the same
        point, the class's first; the default keeps the paper's one point per image.
      - Points are drawn per class as many as the largest class needs, so imbalanced
        classes work (the official code silently under-fills them).
      - When the grid has too few features to place the classes on distinct hypercube
        vertices (``make_classification`` needs 2^features ≥ classes, e.g. 3 classes
        on 8×8 grey images), the patch is halved until it has; ``ctx.notes`` records the
        patch size used.
    """

    name = "lsp"
    release = "truncate"
    paper = "Yu et al., Availability Attacks Create Shortcuts, KDD"
    year = 2022
    eps: float = 6 / 255
    patch_size: int = 8
    class_sep: float = 10.0
    classwise: bool = False

    def __post_init__(self):
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")

    def l2_budget(self, image_shape: tuple[int, int, int]) -> float:
        return math.sqrt(math.prod(image_shape)) * self.eps

    def threat_model(self, image_shape: tuple[int, int, int] = (3, 32, 32)) -> ThreatModel:
        return ThreatModel("l2", self.l2_budget(image_shape))

    def generate(self, x, y, ctx):
        return exported(x, self.noise(x, y, ctx))

    def noise(self, x, y, ctx) -> torch.Tensor:
        """δ (float32, the shape of ``x``): each image's toy point as patches, at the L2 budget."""
        c, h, w = x.shape[1:]
        patch = self._patch_for(c, h, w, ctx.num_classes)
        grid_h, grid_w = math.ceil(h / patch), math.ceil(w / patch)
        points = self._points(y, ctx, n_features=grid_h * grid_w * c)           # (N, features)
        # Feature order (row, col, channel) as in the official code, then one patch per cell.
        coarse = points.view(len(x), grid_h, grid_w, c).permute(0, 3, 1, 2)
        noise = coarse.repeat_interleave(patch, 2).repeat_interleave(patch, 3)[:, :, :h, :w]
        noise = noise / noise.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
        ctx.notes["lsp_patch_size"] = patch
        return self.l2_budget((c, h, w)) * noise.to(x.device)

    def _patch_for(self, c: int, h: int, w: int, num_classes: int) -> int:
        patch = self.patch_size
        while patch > 1 and 2 ** (math.ceil(h / patch) * math.ceil(w / patch) * c) < num_classes:
            patch //= 2
        return patch

    def _points(self, y: torch.Tensor, ctx, n_features: int) -> torch.Tensor:
        """One toy point per image, drawn from the cluster of the image's class."""
        from sklearn.datasets import make_classification  # imported here: slow, and only LSP needs it

        y = y.cpu()
        num_classes = ctx.num_classes
        per_class = int(torch.bincount(y, minlength=num_classes).max())
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator()))
        data, labels = make_classification(
            n_samples=per_class * num_classes, n_features=n_features, n_informative=n_features,
            n_redundant=0, n_repeated=0, n_classes=num_classes, n_clusters_per_class=1,
            class_sep=self.class_sep, flip_y=0.0, random_state=seed)
        # make_classification gives every class exactly per_class points: table[k, r] is
        # the r-th point of class k.
        order = torch.from_numpy(labels).argsort(stable=True)
        table = torch.from_numpy(data).float()[order].view(num_classes, per_class, n_features)
        if self.classwise:
            return table[y, 0]
        return table[y, _rank_within_class(y)]


def exported(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The images the official script stores: clip(255·(k/255 + δ), 0, 255) in float64, truncated
    as numpy's ``astype(np.uint8)`` (k the clean level). Images off the uint8 grid have no stored
    form: clamp(x + δ, 0, 1)."""
    if not on_uint8_grid(x):
        return (x + noise).clamp(0, 1)
    levels = ((x.double() * 255).round() / 255 + noise.double()) * 255
    return (levels.clamp(0, 255).trunc() / 255).float()


def _rank_within_class(y: torch.Tensor) -> torch.Tensor:
    """For each image, how many images of its class come before it (0, 1, 2, ...)."""
    order = y.argsort(stable=True)
    sorted_y = y[order]
    class_start = torch.searchsorted(sorted_y, sorted_y, right=False)
    rank = torch.empty_like(y)
    rank[order] = torch.arange(len(y)) - class_start
    return rank
