"""Records of older versions: hyperparameters added since, code fingerprints of an older kind."""
from __future__ import annotations

import json

from uebench.records import ADDED_HPARAMS, Record, checksum, hparams_as_made
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


# -- fingerprints: version 2 follows the code, not the file's bytes ---------------------------

def test_the_code_fingerprint_ignores_docstrings_comments_layout_and_import_paths():
    from uebench.storage import normalized_code
    before = '"""A method."""\nfrom uebench.perturb import pgd\n\ndef craft(x):\n    """Doc."""\n    return pgd(x) + 1\n'
    after = '"""Another text."""\nfrom uebench.toolkit.perturb import pgd   # moved\n\n\ndef craft(x):\n    return pgd(x) + 1\n'
    assert normalized_code(before) == normalized_code(after)
    assert normalized_code(before) != normalized_code(before.replace("+ 1", "+ 2"))           # what it does
    assert normalized_code(before) != normalized_code(before.replace("import pgd", "import pgd, fgsm"))  # what it binds
    method = 'class M:\n    name = "m"\n    presets = {"cpu": {"steps": 5}}\n    steps: int = 10\n'
    assert normalized_code(method) == normalized_code(method.replace('{"cpu"', '{"gpu": {"steps": 50}, "cpu"'))
    assert normalized_code(method) != normalized_code(method.replace("steps: int = 10", "steps: int = 20"))


def test_migrate_restamps_a_schema_2_record_of_unchanged_code_and_leaves_a_stale_one(tmp_path):
    from uebench.migrate import migrate
    from uebench.records import load_record, write_record
    from uebench.storage import code_fingerprint
    em, none = configure(ATTACKS, "em", "cpu", {}), configure(DEFENSES, "none", "cpu", {})
    cell = Cell(em, none, 0)
    made_here = Record.from_dict({"status": "ok", "seed": 0, "schema": 2, "table": TABLE, "metrics": {"test_acc": 0.5},
                                  "attack": {"name": "em", "folder": em.folder, "hparams": em.params,
                                             "code": code_fingerprint(ATTACKS.get("em"), version=1)},
                                  "defense": {"name": "none", "folder": "none", "hparams": {},
                                              "code": code_fingerprint(DEFENSES.get("none"), version=1)}})
    other_code = Record.from_dict({**made_here.to_dict(), "schema": 2})
    other_code.attack.code = "0123456789ab"
    for folder, record in (("here", made_here), ("other", other_code)):
        write_record(tmp_path / "ds" / "table" / folder / "none" / "seed0.json", record)
    # written as schema 3 by write_record: mark them as the version-2 records they stand for
    for folder in ("here", "other"):
        path = tmp_path / "ds" / "table" / folder / "none" / "seed0.json"
        raw = json.loads(path.read_text()) | {"schema": 2}
        raw.pop("checksum")
        path.write_text(json.dumps({**raw, "checksum": checksum(raw)}))
    assert finished_as(load_record(tmp_path / "ds/table/here/none/seed0.json"), cell)      # v2 read as v2

    outcome = migrate(tmp_path)
    assert [p.parts[-3] for p in outcome["migrated"]] == ["here"] and [p.parts[-3] for p in outcome["stale"]] == ["other"]
    restamped = load_record(tmp_path / "ds/table/here/none/seed0.json")
    assert restamped.schema == 3 and restamped.attack.code == em.code != made_here.attack.code
    assert finished_as(restamped, cell)
    assert load_record(tmp_path / "ds/table/other/none/seed0.json").schema == 2     # left as it was
    assert migrate(tmp_path)["migrated"] == []                                      # a second pass: nothing


PLUGIN = '''"""{doc}"""
from dataclasses import dataclass
from uebench import Attack, ThreatModel, register_attack


@register_attack
@dataclass
class AsOfNoise(Attack):
    name = "as-of-noise"
    eps: float = 4 / 255

    def threat_model(self):
        return ThreatModel("linf", self.eps)

    def generate(self, x, y, ctx):
        return (x + {step}).clamp(0, 1)
'''


def test_migrate_as_of_a_revision_restamps_records_whose_file_changed_but_not_its_code(tmp_path, monkeypatch):
    """Run after a refactor touched docstrings or imports: the files are compared as they were."""
    import subprocess

    from registry_sandbox import sandbox_registries
    from uebench.migrate import migrate
    from uebench.records import load_record, write_record
    from uebench.registry import load_plugin
    from uebench.storage import code_fingerprint, source_fingerprint
    sandbox_registries(monkeypatch)
    repo = tmp_path / "repo"
    repo.mkdir()
    plugin = repo / "as_of_noise.py"
    plugin.write_text(PLUGIN.format(doc="First words.", step="self.eps"))
    git = lambda *args: subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)   # noqa: E731
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "the method", "--allow-empty")
    git("add", plugin.name)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "the method")
    made_by = source_fingerprint(plugin.read_bytes(), version=1)
    load_plugin(str(plugin))

    def schema_2_record(folder: str):
        record = Record.from_dict({"status": "ok", "seed": 0, "table": TABLE, "metrics": {"test_acc": 0.5},
                                   "attack": {"name": "as-of-noise", "folder": "as-of-noise", "hparams": {},
                                              "code": made_by},
                                   "defense": {"name": "none", "folder": "none", "hparams": {},
                                               "code": code_fingerprint(DEFENSES.get("none"), version=1)}})
        path = tmp_path / "results" / "ds" / folder / "as-of-noise" / "none" / "seed0.json"
        write_record(path, record)
        raw = json.loads(path.read_text()) | {"schema": 2}
        raw.pop("checksum")
        path.write_text(json.dumps({**raw, "checksum": checksum(raw)}))
        return path

    plugin.write_text(PLUGIN.format(doc="Other words, and the imports could move too.", step="self.eps"))
    path = schema_2_record("docstring")
    assert migrate(tmp_path / "results", dry_run=True)["stale"] == [path]          # the file's bytes changed
    assert migrate(tmp_path / "results", as_of="HEAD")["migrated"] == [path]       # its code did not
    assert load_record(path).attack.code == code_fingerprint(ATTACKS.get("as-of-noise"))

    plugin.write_text(PLUGIN.format(doc="First words.", step="2 * self.eps"))      # the code changed
    path = schema_2_record("code")
    assert migrate(tmp_path / "results", as_of="HEAD")["stale"] == [path]
