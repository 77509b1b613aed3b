"""The contract every registered defense keeps, tested over the whole registry.

A new defense is tested here for free: its smoke preset must train a working classifier
on tiny data, deterministically for a fixed seed, and declare its protocols and test-time
transform consistently. A defense whose module does not import is skipped with the reason.
"""
from __future__ import annotations

import pytest
import torch

from uebench.api import DETECTION, PROTOCOLS, Defense, Detector
from uebench.registry import DEFENSES, PluginError

N_IMAGES, N_CLASSES = 512, 4


def defense_class(name: str) -> type[Defense]:
    try:
        return DEFENSES.get(name)
    except PluginError as err:
        pytest.skip(str(err))


def tiny_set(seed: int, n: int = N_IMAGES, size: int = 16):
    """Checkerboards whose period (2, 4, 8 or 16 px) is the class, at a random phase and
    brightness, plus noise. The class survives what defenses do to images (flips, crops,
    rotations, colour changes, cut-outs), so every working defense can learn it in two
    epochs; the conftest blobs differ by horizontal position, which a flip confuses."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % N_CLASSES
    half = 2 ** y[:, None, None]                                                # half-periods 1, 2, 4, 8 px
    rows = torch.arange(size)[None, :, None] + torch.randint(0, size, (n, 1, 1), generator=g)
    cols = torch.arange(size)[None, None, :] + torch.randint(0, size, (n, 1, 1), generator=g)
    board = ((rows // half + cols // half) % 2).float()[:, None]                # (n, 1, H, W)
    brightness = 0.3 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)
    x = brightness + 0.25 * (2 * board - 1) + 0.05 * torch.randn(n, 3, size, size, generator=g)
    return x.clamp(0, 1), y


def overrides(cls: type[Defense], hook: str) -> bool:
    return getattr(cls, hook) is not getattr(Defense, hook)


def is_detector(name: str) -> bool:
    try:
        return issubclass(DEFENSES.get(name), Detector)
    except PluginError:
        return False


NAMES = [n for n in DEFENSES.names() if not is_detector(n)]
# defenses whose smoke preset runs the machinery but cannot learn its job in seconds (said why)
SMOKE_CANNOT_LEARN = {"bridgepure": "a diffusion bridge needs thousands of training steps; its math is checked "
                                    "against the official code in tests/defenses/test_bridgepure.py"}
DETECTORS = [n for n in DEFENSES.names() if is_detector(n)]


@pytest.mark.parametrize("name", NAMES)
def test_declarations_are_consistent(name):
    cls = defense_class(name)
    assert cls.name == name
    assert isinstance(cls.protocols, tuple) and cls.protocols, "protocols must be a non-empty tuple"
    assert set(cls.protocols) <= set(PROTOCOLS) and len(set(cls.protocols)) == len(cls.protocols)
    assert cls.transforms_test == overrides(cls, "transform_test"), \
        "transforms_test must be True exactly when transform_test is overridden"
    if overrides(cls, "loss"):
        assert "contrastive" not in cls.protocols, "a defense that changes the supervised loss is supervised-only"
    defense = cls.for_preset("smoke")
    x, _ = tiny_set(seed=2)
    x_test = defense.transform_test(x[:16])
    assert x_test.shape == x[:16].shape and x_test.min() >= 0 and x_test.max() <= 1
    if not cls.transforms_test:
        assert torch.equal(x_test, x[:16])


@pytest.mark.parametrize("name", NAMES)
def test_smoke_preset_trains_a_working_deterministic_classifier(name, ctx):
    cls = defense_class(name)
    x, y = tiny_set(seed=0)
    reference = tiny_set(seed=1)
    logits = []
    for _ in range(2):
        defense = cls.for_preset("smoke")
        if defense.leaked_pairs():                # as the cell does for a defense granted pairs
            ctx.leaked_pairs = (x[:defense.leaked_pairs()].clone(), x[:defense.leaked_pairs()].clone())
        torch.manual_seed(ctx.seed)          # as the runner does before every fit
        model = defense.fit(x.clone(), y.clone(), reference, ctx)
        assert isinstance(model, torch.nn.Module) and not model.training, "fit must return a model in eval mode"
        with torch.no_grad():
            logits.append(model(x))
    assert logits[0].shape == (N_IMAGES, N_CLASSES) and torch.isfinite(logits[0]).all()
    accuracy = (logits[0].argmax(1) == y).float().mean().item()
    assert name in SMOKE_CANNOT_LEARN or accuracy > 1 / N_CLASSES + 0.1, f"{name}: training accuracy {accuracy:.2f} is at chance"
    assert torch.allclose(logits[0], logits[1], atol=1e-5), f"{name}: a fixed seed must give the same model"
    x_aug, y_aug = defense.augment(x[:16], y[:16])
    assert x_aug.shape == x[:16].shape and len(y_aug) == 16
    if y_aug.ndim == 2:
        assert "contrastive" not in cls.protocols, "soft labels only exist in supervised training"


@pytest.mark.parametrize("name", DETECTORS)
def test_a_detector_scores_every_image_deterministically(name, ctx):
    cls = defense_class(name)
    assert cls.name == name and "detect" in name and cls.protocols == DETECTION
    x, y = tiny_set(seed=0)
    x[::2] = (x[::2] + 8 / 255 * torch.sign(torch.randn(N_CLASSES, *x.shape[1:],
                                                        generator=torch.Generator().manual_seed(3)))[y[::2]]).clamp(0, 1)
    reference = tiny_set(seed=1)
    runs = []
    for _ in range(2):
        torch.manual_seed(ctx.seed)
        detector = cls.for_preset("smoke")
        scores = detector.score(x.clone(), y.clone(), reference, ctx)
        runs.append(scores)
        flags = detector.flag(scores)
        assert scores.shape == (N_IMAGES,) and torch.isfinite(scores).all()
        assert flags.shape == (N_IMAGES,) and flags.dtype == torch.bool
    assert torch.allclose(runs[0], runs[1], atol=1e-6), f"{name}: a fixed seed must give the same scores"
