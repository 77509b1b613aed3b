"""One-Pixel Shortcut (OPS): one pixel per class, set to the colour that stands out most."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from uebench.api import Attack, ThreatModel

CHUNK = 512  # images per step of the search (the deviation tensor is 2^C × chunk × H × W)


@dataclass
class OPS(Attack):
    """Wu et al., "One-Pixel Shortcut: On the Learning Preference of Deep Neural Networks", ICLR 2023.

    For each class k, search every pixel position p and every binary colour v ∈ {0, 1}^C
    for the one that deviates most, and most consistently, from the class's own pixels:
    with d_i = mean over channels of |v − x_i[:, p]|, maximise mean_i(d_i) / std_i(d_i)
    over the class's images i. Then set pixel p of every image of class k to v. Only one
    pixel position per image changes (L0 = 1), yet a network learns the pixel, not the
    image. No model is involved. Classes are searched in order, and a (position,
    colour) pair taken by an earlier class is excluded (as in the official code), so two
    classes never share a shortcut.

    Defaults (paper): one pixel (L0 = 1), binary colours.

    Deviations:
      - The statistic is computed per image as the mean over channels, then mean and
        (population) std over the class's images; the official code takes mean and std
        over images and channels together.
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
        """The search criterion mean/std of d for every class, colour and position: (K, 2^C, H, W)."""
        c, h, w = x.shape[1:]
        colours = all_colours(c).to(x)                                           # (2^C, C)
        total = torch.zeros(num_classes, len(colours), h, w, dtype=torch.float64, device=x.device)
        total_sq = torch.zeros_like(total)
        for start in range(0, len(x), CHUNK):
            xb = x[start:start + CHUNK]
            yb = y[start:start + CHUNK].to(x.device)
            # d in float32 (the costly part), its sums in float64 (std = √(E d² − (E d)²) cancels)
            dev = (colours[:, None, :, None, None] - xb[None]).abs_().mean(dim=2)   # (2^C, n, H, W)
            dev = dev.transpose(0, 1).double()
            total.index_add_(0, yb, dev)
            total_sq.index_add_(0, yb, dev.square_())
        count = torch.bincount(y.cpu(), minlength=num_classes).to(total)[:, None, None, None]
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
