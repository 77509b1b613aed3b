"""UEraser (defenses/ueraser.py)."""
from __future__ import annotations

import torch

from uebench.defenses.ueraser import UEraser, UEraserLite, UEraserMax
from uebench.models import create_model


def test_ueraser_repeat_epochs_scale_with_the_budget():
    assert UEraser().repeat_epochs_for(300) == 50
    assert UEraser().repeat_epochs_for(15) == 3
    assert UEraserLite().repeat_epochs_for(15) == 0
    assert UEraserMax().repeat_epochs_for(15) == 15
    d = UEraser()
    d.repeat_epochs = d.repeat_epochs_for(12)
    assert [d.copies_at(e) for e in (0, 1, 2, 11)] == [5, 5, 1, 1]


def test_ueraser_chain_keeps_shape_and_range_and_changes_images(tiny):
    x, _ = tiny
    torch.manual_seed(0)
    for defense in (UEraser(), UEraser(jpeg_quality=10)):
        out = defense.erase(x)
        assert out.shape == x.shape and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1
        assert (out - x).abs().mean() > 0.02
    assert UEraser().erase(x[:, :1]).shape == x[:, :1].shape


def test_ueraser_max_over_copies_loss_exceeds_the_single_copy_loss(tiny):
    x, y = tiny
    torch.manual_seed(0)
    model = create_model("smallcnn", 3, 4).eval()
    defense = UEraser()
    defense.repeat_epochs = 1
    with torch.no_grad():
        for seed in range(4):
            torch.manual_seed(seed)
            max_over_five = defense.loss(model, x, y, epoch=0)
            torch.manual_seed(seed)
            single = defense.loss(model, x, y, epoch=1)   # past the repeat epochs: K = 1
            assert max_over_five >= single
