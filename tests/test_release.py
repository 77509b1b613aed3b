"""Every poison leaves its attack as a released image set (uebench/release.py, issue 26 item 2)."""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import pytest
import torch

from conftest import make_ctx, tiny_images
from test_attack_contract import DATASETS, N_IMAGES, make_context
from uebench.api import Attack, ThreatModel
from uebench.budget import check_budget
from uebench.registry import ATTACKS, PluginError
from uebench.release import FLOAT_UNTIL_RECOMPUTED, ON_LEVEL, on_uint8_grid, release_images

CLEAN = torch.tensor([[[[10, 20, 30, 250]]]], dtype=torch.float32) / 255


def levels(x: torch.Tensor) -> list[int]:
    assert on_uint8_grid(x)
    return (x.double() * 255).round().int().flatten().tolist()


def test_round_is_the_nearest_level_halves_up():
    poisoned = (CLEAN * 255 + torch.tensor([0.5, -0.5, 2.49, 7.9])) / 255
    assert levels(release_images(CLEAN, poisoned, "round")) == [11, 20, 32, 255]   # 257.9 clips to 255


def test_truncate_is_the_level_below_but_keeps_a_level_read_a_hair_low():
    poisoned = (CLEAN * 255 + torch.tensor([0.99, -0.01, -ON_LEVEL / 2, 3.0])) / 255
    assert levels(release_images(CLEAN, poisoned, "truncate")) == [10, 19, 30, 253]


def test_round_noise_adds_the_rounded_noise_to_the_clean_level():
    poisoned = (CLEAN * 255 + torch.tensor([0.4, 1.6, -2.6, 0.45])) / 255
    assert levels(release_images(CLEAN, poisoned, "round-noise")) == [10, 22, 27, 250]


def test_values_on_the_grid_pass_bit_for_bit_and_float_images_are_left_alone():
    on_grid = (CLEAN * 255 + torch.tensor([3.0, -8.0, 0.0, 5.0])).clamp(0, 255) / 255
    for rule in ("round", "truncate", "round-noise"):
        assert torch.equal(release_images(CLEAN, on_grid, rule), on_grid)
    off_grid_clean = CLEAN + 0.3 / 255
    poisoned = off_grid_clean + 0.2 / 255
    assert torch.equal(release_images(off_grid_clean, poisoned, "round"), poisoned)
    with pytest.raises(ValueError, match="release rule"):
        release_images(CLEAN, on_grid, "nearest")


@dataclass
class HalfLevelNoise(Attack):
    """A plugin's attack that returns float noise of ±(k + 0.3)/255 and declares no release rule."""

    name = "half-level-noise"

    def threat_model(self):
        return ThreatModel("linf", 8 / 255)

    def generate(self, x, y, ctx):
        signs = torch.randint(0, 2, x.shape, generator=ctx.generator()) * 2 - 1
        return (x + signs * 7.7 / 255).clamp(0, 1)


def test_a_plugin_attack_releases_uint8_images_within_its_budget():
    """Before the release rule, this plugin handed the victim images 0.3 levels off the grid."""
    x, y = tiny_images(32)
    x = (x * 255).round() / 255
    out = HalfLevelNoise()(x, y, make_ctx())
    assert on_uint8_grid(out) and not on_uint8_grid(HalfLevelNoise().generate(x, y, make_ctx()))
    check_budget(x, out, ThreatModel("linf", 8 / 255))
    assert ((out - x).abs().amax() * 255).round() == 8                       # 7.7 rounds to 8, not beyond


def test_a_misspelt_release_rule_is_refused_when_the_attack_loads(monkeypatch):
    from registry_sandbox import sandbox_registries
    sandbox_registries(monkeypatch)
    ATTACKS.register("bad-release", type("BadRelease", (HalfLevelNoise,), {"name": "bad-release",
                                                                         "release": "nearest"}))
    with pytest.raises(PluginError, match="release must be one of round, round-noise, truncate"):
        ATTACKS.get("bad-release")


def test_the_built_ins_still_handing_over_floats_declare_no_rule_of_their_own():
    """``FLOAT_UNTIL_RECOMPUTED`` names built-ins only, and an attack leaves it when its module
    declares its release rule (and its row is recomputed): never both."""
    for name in FLOAT_UNTIL_RECOMPUTED:
        cls = ATTACKS.get(name)
        assert cls.__module__.startswith(("attacks.", "uebench.attacks.")), name
        declared = [c for c in cls.__mro__ if "release" in vars(c) and c is not Attack]
        assert not declared, f"{name} declares release in {declared[0].__module__}: take it out of the set"


def self_exporting_builtins() -> list[str]:
    """Built-ins that are not pending and declare no rule: their ``generate`` exports by itself."""
    names = []
    for name in ATTACKS.names():
        try:
            cls = ATTACKS.get(name)
        except PluginError:
            continue
        own_module = inspect.getmodule(cls)
        if name in FLOAT_UNTIL_RECOMPUTED or getattr(cls, "by_name_only", False):
            continue
        if cls.__module__.startswith(("attacks.", "uebench.attacks.")) and "release" not in vars(cls) \
                and own_module is not None:
            names.append(name)
    return names


@pytest.mark.parametrize("name", self_exporting_builtins())
def test_attacks_that_export_by_themselves_are_unchanged_by_the_release(name, tmp_path):
    """Their committed cells were made from what ``generate`` returns: the release must not move it."""
    data = DATASETS["rgb16"]
    x, y = tiny_images(N_IMAGES, **data)
    x = (x * 255).round() / 255
    attack = ATTACKS.get(name).for_preset("smoke")
    torch.manual_seed(0)
    raw = attack.generate(x, y, make_context(data, tmp_path)).float()
    assert torch.equal(attack(x, y, make_context(data, tmp_path)), raw)


def test_every_committed_cell_of_a_released_attack_was_made_from_released_images():
    """A built-in that declares its release rule left FLOAT_UNTIL_RECOMPUTED when its row was
    recomputed: every committed record of it must come from a poison made by the release (its notes
    say how it was released). Records of schema 1 carry no code fingerprint, so a run would keep
    them as finished: this is what catches one left behind."""
    from pathlib import Path

    from uebench.records import read_record
    results = Path(__file__).resolve().parents[1] / "results"
    def declares_in_its_module(cls) -> bool:          # what changed the module's fingerprint
        return any("release" in vars(c) and c.__module__ == cls.__module__ for c in cls.__mro__)

    released = {name for name in ATTACKS.names() if name not in FLOAT_UNTIL_RECOMPUTED
                and declares_in_its_module(ATTACKS.get(name))}
    stale = []
    for path in sorted(results.glob("*/*/*/*/seed*.json")):
        if path.parts[-3] not in released:
            continue
        record = read_record(path)
        if record is not None and record.status == "ok" and "released_as" not in record.notes.get("attack", {}):
            stale.append(str(path.relative_to(results)))
    assert not stale, f"made from float poisons, to be recomputed: {stale[:5]} ({len(stale)} in all)"


def test_the_guard_allows_an_l2_poison_what_its_release_adds_and_nothing_more():
    """LSP's official export truncates x + δ with ‖δ‖₂ = ε to uint8, which moves its norm past ε: the
    guard accepts the released images (√(C·H·W) levels for truncation), and still refuses a poison
    whose floats already broke the budget."""
    from uebench.budget import BudgetViolation

    x, y = tiny_images(8)
    x = (x * 255).round() / 255
    delta = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    eps = 1.0
    delta = delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * eps
    released = release_images(x, (x + delta).clamp(0, 1), "truncate")
    assert ((released - x).flatten(1).norm(dim=1) > eps + 1e-3).any()
    with pytest.raises(BudgetViolation):
        check_budget(x, released, ThreatModel("l2", eps))
    check_budget(x, released, ThreatModel("l2", eps), released="truncate")
    too_far = release_images(x, (x + 1.3 * delta).clamp(0, 1), "truncate")
    with pytest.raises(BudgetViolation):
        check_budget(x, too_far, ThreatModel("l2", eps), released="truncate")
