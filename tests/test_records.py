"""The record schema: one writer, one reader, and a reader that names the file and the field it rejects."""
from __future__ import annotations

import json

import pytest

from uebench.records import (SCHEMA_VERSION, AttackInfo, DefenseInfo, Metrics, Record, RecordError, TableInfo,
                             ThreatModelInfo, checksum, load_record, read_record, write_record)

TABLE = TableInfo(id="supervised-smallcnn-1ep-abc123", preset="smoke", protocol="supervised", model="smallcnn",
                  dataset={"name": "digits", "shape": [1, 8, 8]}, train={"epochs": 1}, split={"n_test": 10})


def a_record(**changes) -> Record:
    fields = dict(status="ok", seed=0, table=TABLE, metrics=Metrics(test_acc=0.5, train_acc=0.9, n_test=10, n_train=20),
                  attack=AttackInfo("em", "em", {"eps": 8 / 255, "surrogate": None}, code="0123456789ab",
                                    threat_model=ThreatModelInfo("linf", 8 / 255, "L∞ 8/255"), target="supervised"),
                  defense=DefenseInfo("none", "none", {}, code="ba9876543210", protocols=["supervised"]),
                  notes={"attack": {"em_rounds": 3, "maybe": None}, "defense": {}}, timing={"cell_s": 1.5})
    return Record(**(fields | changes))


def write_raw(path, raw: dict) -> None:
    """A record file as another program (or a hand edit) might leave it, with a valid checksum."""
    path.write_text(json.dumps({**raw, "checksum": checksum(raw)}))


def test_a_record_reads_back_as_written(tmp_path):
    record = a_record()
    write_record(tmp_path / "seed0.json", record)
    again = load_record(tmp_path / "seed0.json")
    assert again == record and again.schema == SCHEMA_VERSION
    assert again.attack.hparams["surrogate"] is None and again.notes["attack"]["maybe"] is None  # free dicts kept whole
    raw = json.loads((tmp_path / "seed0.json").read_text())
    assert "traceback" not in raw and raw["error"] is None        # unset fields left out; "no error" said


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("seed"), "lacks seed"),
    (lambda r: r["attack"].pop("folder"), "lacks attack.folder"),
    (lambda r: r["metrics"].update(test_acc="0.5"), "metrics.test_acc must be a number, got '0.5'"),
    (lambda r: r.update(seed=True), "seed must be int, got True"),
    (lambda r: r.update(status="done"), "status must be one of ok, failed, not-applicable, got 'done'"),
    (lambda r: r.update(metrics=None), "lacks metrics.test_acc (status ok)"),
    (lambda r: r.pop("table"), "lacks table (status ok)"),
    (lambda r: r["defense"].update(protocol="supervised"), "unknown field defense.protocol"),
    (lambda r: r.update(attack=[]), "attack must be an object, got list"),
    (lambda r: r.update(schema=SCHEMA_VERSION + 1), f"schema {SCHEMA_VERSION + 1}, newer than this uebench reads"),
])
def test_a_record_that_breaks_the_schema_is_refused_naming_the_file_and_the_field(tmp_path, change, message):
    raw = a_record().to_dict()
    change(raw)
    path = tmp_path / "seed0.json"
    write_raw(path, raw)
    with pytest.raises(RecordError) as err:
        load_record(path)
    assert str(err.value).startswith(f"{path}: {message}")        # one line: the file, then the field
    assert read_record(path) is None                              # the runner redoes such a cell


def test_a_failed_record_of_an_older_version_reads(tmp_path):
    """Version 1 wrote ``metrics: {}`` for a failed cell and had no code fingerprints."""
    raw = a_record(status="failed", metrics=None, error="RuntimeError: out of memory").to_dict()
    raw |= {"schema": 1, "metrics": {}}
    del raw["attack"]["code"], raw["defense"]["code"]
    write_raw(tmp_path / "seed0.json", raw)
    record = load_record(tmp_path / "seed0.json")
    assert record.metrics is None and record.attack.code is None and record.error.startswith("RuntimeError")


def test_a_truncated_or_edited_record_is_refused(tmp_path):
    path = tmp_path / "seed0.json"
    write_record(path, a_record())
    text = path.read_text()
    path.write_text(text.replace('"test_acc": 0.5', '"test_acc": 0.9'))
    with pytest.raises(RecordError, match="fails its checksum"):
        load_record(path)
    path.write_text(text[:50])
    with pytest.raises(RecordError, match="truncated or not JSON"):
        load_record(path)
