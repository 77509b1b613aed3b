"""Issue 17, "no silently wrong number": what the other test files do not cover (code
fingerprints in every cache key, warnings on implausible input, workers that die with their
driver, claims that split one grid between concurrent runs)."""
from __future__ import annotations

import importlib.util
import sys

import pytest
import torch


def _module_from(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# -- every cache key carries the fingerprint of the code that made the entry ------------------

def test_code_fingerprint_follows_the_source_file(tmp_path, monkeypatch):
    from uebench.context import code_fingerprint
    source = tmp_path / "some_method.py"
    source.write_text("def make():\n    return 1\n")
    before = code_fingerprint(_module_from(source, "some_method").make)
    source.write_text("def make():\n    return 2\n")
    after = code_fingerprint(_module_from(source, "some_method").make)
    assert before != after
    monkeypatch.setattr("uebench.__version__", "9.9.9")
    assert code_fingerprint(_module_from(source, "some_method").make) != after
    monkeypatch.delitem(sys.modules, "some_method")


def test_shared_caches_are_keyed_by_code(ctx, monkeypatch):
    """ctx.cached (surrogates, UCL, the perceptual network) and the diffusion models."""
    from uebench import context, diffusion
    diffusion_code = context.code_fingerprint(diffusion.train_diffusion)
    built = []
    build = lambda: built.append(1) or len(built)       # noqa: E731
    assert ctx.cached({"what": "x"}, build) == 1 and ctx.cached({"what": "x"}, build) == 1
    monkeypatch.setattr(context, "code_fingerprint", lambda *objects: "edited")
    assert ctx.cached({"what": "x"}, build) == 2                 # other code: built again

    keys = []

    class Seen(Exception):
        pass

    def capture(key):
        keys.append(key)
        raise Seen

    monkeypatch.setattr(diffusion, "content_key", capture)
    with pytest.raises(Seen):
        diffusion.diffusion_model((torch.rand(4, 3, 16, 16), torch.zeros(4)), "tiny", ctx)
    assert keys[0]["code"] == diffusion_code


# -- implausible input is said, in the output and in the records --------------------------------

def _cli(capsys, *argv):
    from uebench.cli import main
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_a_budget_far_above_the_norms_and_a_poison_that_changes_nothing_are_warned(tmp_path, capsys):
    from uebench.records import iter_records
    base = ["run", "--preset", "smoke", "--epochs", "1", "--attacks", "random-noise", "--defenses", "none",
            "--device", "cpu", "--quiet"]
    code, err = _cli(capsys, *base, "-A", "random-noise.eps=1", "--results-dir", str(tmp_path / "big"))
    assert code == 0
    assert "warning: attack random-noise@" in err and "budget L∞ 255/255 is far above the field's norms" in err
    warned = {p.parts[-3]: r["warnings"] for p, r in iter_records(tmp_path / "big")}
    assert warned["clean"] == [] and "L∞ 255/255" in next(w for k, ws in warned.items() if k != "clean" for w in ws)

    code, err = _cli(capsys, *base, "-A", "random-noise.eps=0", "--results-dir", str(tmp_path / "zero"))
    assert code == 0 and "the poison of random-noise equals the clean images (L∞ 0)" in err
    warned = [r["warnings"] for p, r in iter_records(tmp_path / "zero") if p.parts[-3] != "clean"]
    assert warned == [["the poison of random-noise equals the clean images (L∞ 0): this row measures clean data"]]

    code, err = _cli(capsys, *base, "--results-dir", str(tmp_path / "usual"))
    assert code == 0 and "warning" not in err
