"""CONTRIBUTING.md's two examples work as written: a newcomer copying them gets a running attack and defense."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from uebench.plan import RunSpec
from uebench.runner import run

GUIDE = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"


def examples() -> list[str]:
    """The guide's Python code blocks that define a method (the ones a newcomer copies into a file)."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    return [re.sub(r"^ {3}", "", b, flags=re.M) for b in blocks if "@dataclass" in b]


def test_the_guides_attack_and_defense_run_in_a_grid(tmp_path):
    attack, defense = examples()
    # As files in attacks/ and defenses/ they would be found by their name; as a plugin file they
    # register with the decorators, which is the one line the guide's third-party section adds.
    plugin = tmp_path / "guide_methods.py"
    plugin.write_text(f"{attack}\n\n{defense.replace('from __future__ import annotations', '')}\n\n"
                      "from uebench import register_attack, register_defense\n"
                      "register_attack(SignFlip)\nregister_defense(Posterize)\n")
    spec = RunSpec(attacks="sign-flip", defenses="posterize", preset="smoke", device="cpu",
                   overrides={"epochs": 1, "n_protected": 128, "n_reference": 64, "test_subset": 100},
                   results_dir=tmp_path / "results", plugins=[str(plugin)], progress=False)
    records = {(r.attack.name, r.defense.name): r for r in run(spec)}
    assert {key: r.status for key, r in records.items()} == {
        ("clean", "none"): "ok", ("clean", "posterize"): "ok", ("sign-flip", "none"): "ok",
        ("sign-flip", "posterize"): "ok"}
    assert records["sign-flip", "none"].budget["linf_max"] == pytest.approx(8 / 255, abs=1e-6)
