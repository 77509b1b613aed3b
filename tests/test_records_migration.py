"""Records written before a method gained a hyperparameter: read with the value they were made with."""
from __future__ import annotations

from uebench.records import ADDED_HPARAMS, Record, hparams_as_made
from uebench.registry import ATTACKS, DEFENSES
from uebench.plan import Cell, configure, finished_as


TABLE = {"id": "t", "preset": "cpu", "protocol": "supervised", "model": "smallcnn", "dataset": {}, "train": {},
         "split": {}}


def legacy_record(attack: str, defense: str, attack_params: dict, defense_params: dict) -> Record:
    """A finished schema-1 record: the hyperparameters as they were, no code fingerprint."""
    return Record.from_dict({"status": "ok", "seed": 0, "schema": 1, "table": TABLE, "metrics": {"test_acc": 0.5},
                             "attack": {"name": attack, "folder": attack, "hparams": attack_params},
                             "defense": {"name": defense, "folder": defense, "hparams": defense_params}})


def without(params: dict, *names: str) -> dict:
    return {k: v for k, v in params.items() if k not in names}


OLD_EM = {"export": "signed", "grad_clip": 0.0}    # EM as it ran before both became options


def test_a_record_without_a_new_option_is_finished_where_the_cell_keeps_the_old_behaviour():
    em, none = configure(ATTACKS, "em", "cpu", OLD_EM), configure(DEFENSES, "none", "cpu", {})
    record = legacy_record("em", "none", without(em.params, *OLD_EM), none.params)
    assert finished_as(record, Cell(em, none, 0))
    official = configure(ATTACKS, "em", "cpu", {})                          # the defaults changed
    assert not finished_as(record, Cell(official, none, 0))


def test_a_record_made_before_a_default_changed_is_stale():
    em = configure(ATTACKS, "em", "cpu", OLD_EM)
    le = configure(DEFENSES, "le", "cpu", {})
    record = legacy_record("em", "le", without(em.params, *OLD_EM), without(le.params, "guidance_batch"))
    assert not finished_as(record, Cell(em, le, 0))                           # LE's default is now 500
    strong = configure(DEFENSES, "le", "cpu", {"guidance_batch": 1})
    assert finished_as(record, Cell(em, strong, 0))                           # what it was made with


def test_every_added_hyperparameter_exists_on_its_method():
    for name, added in ADDED_HPARAMS.items():
        registry = ATTACKS if name in ATTACKS.names() else DEFENSES
        params = configure(registry, name, "cpu", {}).params
        assert set(added) <= set(params), f"{name}: {set(added) - set(params)} are not hyperparameters"
    assert hparams_as_made("em", {"export": "positive"})["export"] == "positive"   # a record's own value wins
