"""OPS, the one-pixel shortcut (attacks/ops.py)."""
from __future__ import annotations

import torch

from conftest import grey_images, make_ctx
from uebench.attacks.ops import OPS
from uebench.budget import check_budget


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
