"""The victim architectures: names and widths, parameter counts, 32-px and 8-px forwards, a
training step that lowers the loss, the two committed models unchanged weight for weight,
and cross-architecture tables (--surrogate): their ids, poison cache keys and records."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from uebench.cli import main
from uebench.models import create_model
from uebench.victims import CPU_WIDTHS, FAMILIES, parse_model, resnet18_width

# sha256 of the state_dict (keys and float bytes) under torch.manual_seed(0), computed before
# uebench.victims existed: the committed smallcnn tables and the resnet18 tables depend on them.
PINNED = {("smallcnn", 3, 10): "8a6876b454ee80a8", ("smallcnn", 1, 10): "0bd36d5f32ed8709",
          ("smallcnn", 3, 100): "b1cdaee0e520f1e5", ("resnet18", 3, 10): "8c8405c10b164c09",
          ("resnet18", 1, 10): "45d49a76e308ea38", ("resnet18", 3, 100): "f15af2e07d915557"}

# parameters at 3×32×32 and 10 classes (ResNet-50, VGG-16 and DenseNet-121 match the CIFAR
# versions of kuangliu/pytorch-cifar: 23.52M, 14.73M, 6.96M)
PARAMS = {"smallcnn": 242474, "resnet18": 11173962, "resnet18-w0.25": 701466, "resnet50": 23520842,
          "resnet50-w0.125": 375762, "vgg16": 14728266, "vgg16-w0.25": 924186, "mobilenetv2": 2236682,
          "mobilenetv2-w0.25": 250922, "densenet121": 6956426, "densenet121-w0.125": 119162,
          "vit-tiny": 5364692, "vit-tiny-w0.25": 345860}
CPU_NAMES = ["smallcnn"] + [f"{f}-w{w:g}" for f, w in CPU_WIDTHS.items()]
# seconds to minutes on 2 shared cores (depthwise and dense blocks are slow on CPU): -m slow
HEAVY = {"resnet50-w0.125", "mobilenetv2-w0.25", "densenet121-w0.125"}


def _light_first(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in names]


def state_hash(model) -> str:
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(value.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("name, channels, classes", sorted(PINNED))
def test_committed_models_are_bit_identical(name, channels, classes):
    torch.manual_seed(0)
    assert state_hash(create_model(name, channels, classes)) == PINNED[(name, channels, classes)]


def test_resnet18_width_1_is_resnet18():
    torch.manual_seed(0)
    a = create_model("resnet18", 3, 10).state_dict()
    torch.manual_seed(0)
    b = resnet18_width(3, 10, 1.0).state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_every_family_is_listed_with_its_cpu_width():
    assert set(FAMILIES) >= {"smallcnn", "resnet18", "resnet50", "vgg16", "mobilenetv2", "densenet121", "vit-tiny"}
    assert set(CPU_WIDTHS) == set(FAMILIES) - {"smallcnn"}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count(name):
    assert sum(p.numel() for p in create_model(name, 3, 10).parameters()) == PARAMS[name]


@pytest.mark.parametrize("name", _light_first(CPU_NAMES))
def test_forward_shapes_32px_and_8px_grey(name):
    model = create_model(name, 3, 10).eval()
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    assert model.features(x).shape == (2, model.fc.in_features)      # the interface SimCLR and LE use
    assert create_model(name, 1, 100).eval()(torch.rand(2, 1, 8, 8)).shape == (2, 100)   # smoke: digits


@pytest.mark.parametrize("name", _light_first(CPU_NAMES))
def test_training_steps_lower_the_loss(name):     # 16 px: the smoke preset's sizes are smaller still
    torch.manual_seed(0)
    model = create_model(name, 3, 10).train()
    x, y = torch.rand(32, 3, 16, 16), torch.arange(32) % 10
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("name, message", [
    ("mobilenet", "unknown model"), ("resnet50-w0.50", "write the width the shortest way, resnet50-w0.5"),
    ("resnet50-w1", "write resnet50"), ("vgg16-w0", "must be in (0, 4]"), ("vgg16-w5", "must be in (0, 4]"),
    ("vgg16-w0.1234", "unknown model"), ("resnet-w0.5", "unknown model")])
def test_bad_names_are_refused(name, message):
    with pytest.raises(ValueError) as err:
        parse_model(name)
    assert message in str(err.value)


def test_cli_refuses_unknown_model_in_one_line(capsys):
    assert main(["run", "--model", "mobilenet", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "did you mean mobilenetv2" in err and "\n" not in err
    assert main(["run", "--surrogate", "smallcn", "--dry-run"]) == 2
    assert "--surrogate" in capsys.readouterr().err


def test_list_models_shows_params_and_papers(capsys):
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    for name in CPU_NAMES + ["resnet50", "vgg16", "mobilenetv2", "densenet121", "vit-tiny"]:
        assert f"\n{name} " in out
    assert "23.52M" in out and "Sandler et al." in out and "Dosovitskiy et al." in out


# -- cross-architecture tables -----------------------------------------------------------

def _records(results):
    return {(r["attack"]["name"], r["table"]["id"]): r
            for r in (json.loads(p.read_text()) for p in results.rglob("seed0.json"))}


def test_surrogate_table_shares_the_poison_and_names_both(tmp_path):
    from uebench.leaderboard import title_of
    from uebench.records import load_record
    results = tmp_path / "r"
    base = ["run", "--preset", "smoke", "--attacks", "em", "--defenses", "none", "--epochs", "1",
            "--results-dir", str(results), "--quiet", "-A", "em.max_rounds=1"]
    assert main(base) == 0                                               # victim = surrogate = smallcnn
    poisons = sorted((results / ".cache" / "poisons").glob("em-*.pt"))
    assert len(poisons) == 1
    assert main(base + ["--model", "smallcnn-w0.5", "--surrogate", "smallcnn"]) == 0
    assert sorted((results / ".cache" / "poisons").glob("em-*.pt")) == poisons   # crafted once, reused
    records = _records(results)
    tables = sorted({t for _, t in records})
    assert len(tables) == 2 and any(t.startswith("supervised-smallcnn-w0.5-1ep-") for t in tables)
    cross = next(r for (a, t), r in records.items() if a == "em" and "w0.5" in t)
    plain = next(r for (a, t), r in records.items() if a == "em" and "w0.5" not in t)
    assert cross["status"] == plain["status"] == "ok"
    assert cross["table"]["model"] == "smallcnn-w0.5" and cross["table"]["surrogate"] == "smallcnn"
    assert "surrogate" not in plain["table"]                          # the default: as before the option
    assert cross["notes"]["attack"]["em_surrogate"] == "smallcnn"      # what EM actually trained
    assert cross["timing"]["poison_s"] == plain["timing"]["poison_s"]  # the same cached poison set
    path = next(p for p in results.rglob("seed0.json") if "w0.5" in str(p) and "/em@" in str(p))
    assert "victim smallcnn-w0.5, poisons crafted on smallcnn" in title_of(load_record(path).table)


def test_surrogate_equal_to_victim_is_the_plain_table(tmp_path, capsys):
    common = ["plan", "--preset", "smoke", "--attacks", "random-noise", "--defenses", "none",
              "--results-dir", str(tmp_path)]
    def table_line():
        captured = capsys.readouterr()
        return next(line for line in (captured.out + captured.err).splitlines() if "table " in line)
    assert main(common) == 0
    plain = table_line()
    assert main(common + ["--surrogate", "smallcnn"]) == 0
    assert table_line() == plain
    assert main(common + ["--surrogate", "resnet18"]) == 0
    assert table_line() != plain


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in PARAMS if n != "smallcnn"])
def test_each_listed_model_trains_a_smoke_cell(name, tmp_path):
    results = tmp_path / "r"
    assert main(["run", "--preset", "smoke", "--model", name, "--attacks", "classwise-noise", "--defenses", "none",
                 "--results-dir", str(results), "--quiet"]) == 0
    records = _records(results)
    assert len(records) == 2 and all(r["status"] == "ok" for r in records.values())
