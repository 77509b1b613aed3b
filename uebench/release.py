"""The released image set: a poison leaves its attack as the uint8 images a data owner publishes.

Each official pipeline exports its poison as images in its own way (EM's dataset class truncates,
TAP's ``export_poison`` rounds half up, REM rounds its noise to int8 levels), and a published number
comes from those images. ``Attack.__call__`` hands every poison through :func:`release_images` with the
rule the attack declares (``Attack.release``), so the victim, the budget guard and the record all
see the images a data owner could publish, never the optimiser's floats.

Images that were never uint8 (a value off the 1/255 grid in the clean set) are left as they are:
there is no image format to export to.
"""
from __future__ import annotations

import torch

# What each rule computes, with v = 255·x' (x' the attack's poisoned image in [0, 1]) and k = 255·x
# (the clean image's level): the rule's text goes into the attack's docstring and the listing.
RULES = {
    "round": "the nearest level, halves up: uint8(255·x' + 0.5) (TAP's and AR's official exports; "
             "the default for an attack that declares none)",
    "truncate": "the level below: uint8(255·x') after float arithmetic, numpy's astype(np.uint8) "
                "(OPS, CUDA; EM, class-wise EM, TUE and LSP compute their official pipeline's float "
                "sum themselves, attacks/em.py and attacks/lsp.py)",
    "round-noise": "the clean level plus the noise rounded half to even, clipped: "
                   "clip(k + round(255·(x' − x)), 0, 255) (REM's and SEM's int8 noise)",
}

# The most each rule moves a value, in levels: what a released image may add to an L2 budget.
LEVELS_MOVED = {"round": 0.5, "truncate": 1.0, "round-noise": 0.5}

# float32 holds k/255 to within half its spacing near 1, 1.5e-5 levels: a value this close to a
# level *is* that level (a clean uint8 image, or a poison its attack exported by itself).
FLOAT32_LEVEL = 5e-5
# Truncation reads a value this close below a level as the level: crafting arithmetic leaves a value
# meant to be k + 8 at k + 7.9999, and truncating it must not drop it to k + 7.
ON_LEVEL = 1e-3

# Built-in attacks whose committed cells were made from float poisons, before the release rule
# (issue 26, item 2): they keep handing over floats until their row is recomputed, when the
# attack's module declares its rule and its name leaves this set. Plugins are never in it.
FLOAT_UNTIL_RECOMPUTED = frozenset({
    "aap", "aue", "ucl", "ucl-classwise",
})


def on_uint8_grid(x: torch.Tensor) -> bool:
    """True when every value of ``x`` (in [0, 1]) is a uint8 level k/255."""
    levels = x.double() * 255
    return bool(((levels - levels.round()).abs() < FLOAT32_LEVEL).all())


def release_images(clean: torch.Tensor, poisoned: torch.Tensor, rule: str) -> torch.Tensor:
    """``poisoned`` (float32 in [0, 1], the shape of ``clean``) exported by ``rule`` (a key of
    :data:`RULES`) to the uint8 grid, as float32 levels k/255. A value that already lies on a level
    is returned bit for bit, so an attack that exports by itself is unchanged. ``clean`` off the
    grid: ``poisoned`` unchanged."""
    if rule not in RULES:
        raise ValueError(f"release rule must be one of {sorted(RULES)}, got {rule!r}")
    if not on_uint8_grid(clean):
        return poisoned
    value = poisoned.double() * 255
    if rule == "round":
        levels = torch.floor(value + 0.5)
    elif rule == "truncate":
        levels = torch.floor(value + ON_LEVEL)
    else:
        base = (clean.double() * 255).round()
        levels = base + torch.round(value - base)      # torch.round: half to even, as numpy's
    levels = levels.clamp(0, 255)
    exported = levels.float() / 255
    return torch.where((value - levels).abs() < FLOAT32_LEVEL, poisoned, exported)
