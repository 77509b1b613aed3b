"""Every method's own presets name real presets and real hyperparameters.

``Method.for_preset`` falls back to the paper defaults for a preset a method does not
list, so a misspelled preset key ("cpu " or "smok") would silently run the paper's
(expensive) settings; this test catches it for every registered method.
"""
from __future__ import annotations

import dataclasses

import pytest

from uebench.presets import PRESETS
from uebench.registry import ATTACKS, DEFENSES

METHODS = [(registry, name) for registry in (ATTACKS, DEFENSES) for name in registry.names()]


@pytest.mark.parametrize("registry, name", METHODS, ids=[name for _, name in METHODS])
def test_method_presets_name_known_presets_and_fields(registry, name):
    cls = registry.get(name)
    unknown = set(cls.presets) - set(PRESETS)
    assert not unknown, f"{name}: presets {sorted(unknown)} are not among {sorted(PRESETS)}"
    fields = {f.name for f in dataclasses.fields(cls)}
    for preset, values in cls.presets.items():
        assert set(values) <= fields, f"{name}.presets[{preset!r}]: {sorted(set(values) - fields)} are not fields"
        cls.for_preset(preset)                               # and the values pass the method's checks


def test_compile_is_a_recipe_field_that_leaves_existing_table_ids_alone():
    from uebench.presets import table_config
    from uebench.train import TrainConfig
    eager = table_config("cpu")
    assert "compile" not in eager.train.as_dict()                   # the committed cpu table keeps its id
    assert table_config("cpu", compile=True).train.as_dict()["compile"] is True
    assert TrainConfig().compile is False
