"""One-Pixel Shortcut (OPS): one pixel per class, set to the colour that stands out most."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from uebench.api import Attack, ThreatModel

CHUNK = 512  # images per step of the search (the deviation tensor is 2^C × chunk × C × H × W, float64)


@dataclass
class OPS(Attack):
    """Wu et al., "One-Pixel Shortcut: On the Learning Preference of Deep Neural Networks", ICLR 2023.

    For each class k, search every pixel position p and every binary colour v ∈ {0, 1}^C
    for the one that deviates most, and most consistently, from the class's own pixels:
    with d = |v_c − x_i[c, p]| over every image i of the class *and* every channel c,
    maximise mean(d) / std(d) (population std, both over the N_k·C values jointly, as the
    official ``pixel_search`` does). Then set pixel p of every image of class k to v. Only one
    pixel position per image changes (L0 = 1), yet a network learns the pixel, not the
    image. No model is involved. Classes are searched in order, and a (position,
    colour) pair taken by an earlier class is excluded (as in the official code), so two
    classes never share a shortcut.

    Defaults (paper): one pixel (L0 = 1), binary colours.

    Parity: ``tests/test_parity.py`` checks positions, colours, poisoned images and the
    whole score table against the official code's output on 2,000 CIFAR-10 images.

    Deviations:
      - Positions on non-square images are indexed row-major (the official code divides
        by the height for both coordinates, which is right only for square images).
      - The search is vectorised over positions, colours and classes (sums and sums of
        squares of d accumulated over image chunks in float64).
    """

    name = "ops"
    paper = "Wu et al., One-Pixel Shortcut, ICLR"
    year = 2023

    def threat_model(self) -> ThreatModel:
        return ThreatModel("l0", 1)

    def generate(self, x, y, ctx):
        rows, cols, colours = self.search(x, y, ctx.num_classes)
        out = x.clone()
        idx = torch.arange(len(x), device=x.device)
        y = y.to(x.device)
        # indexing image, row and column with tensors selects one (N, C) pixel per image
        out[idx, :, rows.to(x.device)[y], cols.to(x.device)[y]] = colours.to(x)[y]
        ctx.notes["ops_pixels"] = [[int(r), int(c), colours[k].int().tolist()]
                                   for k, (r, c) in enumerate(zip(rows, cols))]
        return out

    @staticmethod
    def scores(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The search criterion mean/std of d for every class, colour and position: (K, 2^C, H, W).

        d runs over the class's images and channels jointly (N_k·C values per position).
        """
        c, h, w = x.shape[1:]
        colours = all_colours(c).to(x)                                           # (2^C, C)
        total = torch.zeros(num_classes, len(colours), h, w, dtype=torch.float64, device=x.device)
        total_sq = torch.zeros_like(total)
        for start in range(0, len(x), CHUNK):
            xb = x[start:start + CHUNK]
            yb = y[start:start + CHUNK].to(x.device)
            # d in float32 (the costly part), its sums in float64 (std = √(E d² − (E d)²) cancels)
            dev = (colours[:, None, :, None, None] - xb[None]).abs_().double()    # (2^C, n, C, H, W)
            total.index_add_(0, yb, dev.sum(dim=2).transpose(0, 1))
            total_sq.index_add_(0, yb, dev.square_().sum(dim=2).transpose(0, 1))
        # every image contributes C values per position
        count = c * torch.bincount(y.cpu(), minlength=num_classes).to(total)[:, None, None, None]
        mean = total / count.clamp_min(1)
        std = (total_sq / count.clamp_min(1) - mean.square()).clamp_min(0).sqrt()
        return mean / std.clamp_min(1e-12)

    def search(self, x: torch.Tensor, y: torch.Tensor, num_classes: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per class: the chosen row, column and colour (K,), (K,), (K, C)."""
        c, h, w = x.shape[1:]
        scores = self.scores(x, y, num_classes).flatten(1).cpu()              # (K, 2^C·H·W)
        chosen = []
        for k in range(num_classes):  # classes in order; a taken (colour, position) is off-limits
            if chosen:
                scores[k, chosen] = -1.0
            chosen.append(int(scores[k].argmax()))
        chosen = torch.tensor(chosen)
        colour_index, position = chosen // (h * w), chosen % (h * w)
        return position // w, position % w, all_colours(c)[colour_index]


def all_colours(channels: int) -> torch.Tensor:
    """Every binary colour, (2^C, C), first channel the most significant bit."""
    codes = torch.arange(2 ** channels)
    bits = 2 ** torch.arange(channels - 1, -1, -1)
    return ((codes[:, None] // bits) % 2).float()
