"""BridgePure (defenses/bridgepure.py) and its diffusion bridge (uebench/toolkit/bridge.py).

The bridge is compared with numbers from running the official code (EhanW/bridge-pure,
``ddbm/karras_diffusion.py``) in a scratch folder: ``tests/golden/bridge_official.npz`` (its
``provenance`` entry says how), with a fixed stand-in network, so scalings, loss weights, the
noise schedule, the training loss and the Heun sampler with and without churn are each checked.
The threat model (leaked pairs) is checked on real smoke runs.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from registry_sandbox import sandboxed_plugin
from uebench import leaderboard
from uebench.data import to_tensor
from uebench.plan import RunSpec, make_plan
from uebench.ratio import indices_sha256, leaked_indices
from uebench.runner import run
from uebench.toolkit import bridge

GOLDEN = np.load(Path(__file__).resolve().parents[1] / "golden" / "bridge_official.npz")


class StandIn(torch.nn.Module):
    """The golden file's network: F(x, t, x_T) = tanh(0.3 x + 0.2 x_T + 0.1 cos(t / 500)), called
    as uebench calls its UNet (start image concatenated to the input, a ``.sample`` output)."""

    def forward(self, inputs, t):
        x, x_T = inputs.chunk(2, dim=1)
        return SimpleNamespace(sample=torch.tanh(0.3 * x + 0.2 * x_T + 0.1 * torch.cos(t / 500).view(-1, 1, 1, 1)))


def golden(name):
    return torch.from_numpy(GOLDEN[name])


def test_scalings_and_loss_weights_are_the_official_ones():
    c_skip, c_out, c_in = bridge.scalings(golden("sigma"))
    for name, ours in (("c_skip", c_skip), ("c_out", c_out), ("c_in", c_in)):
        assert torch.allclose(ours, golden(name), rtol=1e-12, atol=0), name
    assert torch.allclose(c_out.pow(-2), golden("weight"), rtol=1e-10)


def test_the_noise_schedule_is_the_official_one():
    assert torch.allclose(bridge.karras_sigmas(40), golden("karras40"), rtol=1e-6, atol=0)
    assert torch.allclose(bridge.karras_sigmas(8), golden("karras8"), rtol=1e-6, atol=0)


def test_the_training_loss_is_the_official_one():
    loss = bridge.weighted_error(StandIn(), golden("x0"), golden("xT"), golden("train_sigmas"), golden("noise"))
    assert torch.allclose(loss, golden("loss"), rtol=1e-5)


@pytest.mark.parametrize("churn", [0.0, 0.33])
def test_the_sampler_is_the_official_one(churn):
    # the official sampler draws its noise with torch.randn_like from the global generator seeded 5
    out = bridge.sample(StandIn(), golden("xT"), steps=6, churn=churn, guidance=0.5,
                        generator=torch.Generator().manual_seed(5))
    assert torch.allclose(out, golden(f"sample_churn{churn}"), atol=1e-5)


SPY = textwrap.dedent('''
    from dataclasses import dataclass
    import torch
    from uebench import Defense, register_defense

    @register_defense
    @dataclass
    class PairSpy(Defense):
        """Is granted pairs, keeps them, and what the context of its training looked like."""
        name = "pair-spy"
        paper = "test"
        pairs: int = 16

        def leaked_pairs(self):
            return self.pairs

        def fit(self, x, y, reference, ctx):
            ctx.artifact_dir.mkdir(parents=True, exist_ok=True)
            torch.save(ctx.leaked_pairs, ctx.artifact_dir / "pairs.pt")
            return super().fit(x, y, reference, ctx)

    @register_defense
    @dataclass
    class NoPairs(Defense):
        """Is granted nothing, and says what it found."""
        name = "no-pairs"
        paper = "test"

        def fit(self, x, y, reference, ctx):
            ctx.notes["saw_pairs"] = ctx.leaked_pairs is not None
            return super().fit(x, y, reference, ctx)
''')


@pytest.fixture
def spy(tmp_path, monkeypatch):
    return sandboxed_plugin(tmp_path, monkeypatch, SPY, "pair_spy")


def smoke(tmp_path, plugin, defenses):
    return RunSpec(preset="smoke", attacks="classwise-noise", defenses=defenses, seeds=[0],
                   overrides={"epochs": 1, "n_protected": 128, "n_reference": 64, "test_subset": 100},
                   results_dir=tmp_path / "results", progress=False, plugins=[plugin], device="cpu")


def test_a_defense_granted_pairs_gets_k_seeded_clean_protected_pairs_and_no_other_defense_any(tmp_path, spy):
    s = smoke(tmp_path, spy, "pair-spy,no-pairs")
    plan = make_plan(s)
    records = {(r.attack.name, r.defense.name): r for r in run(s, plan)}
    poison_file, = (tmp_path / "results" / ".cache" / "poisons").glob("classwise-noise-*.pt")
    x_poison = torch.load(poison_file, weights_only=False)["x"]
    x_clean = to_tensor(plan.dataset.x_train[plan.splits.protected])
    chosen = leaked_indices(128, 16, plan.config.split_seed, 0)
    clean, protected = torch.load(plan.table_dir / "classwise-noise" / "pair-spy" / "seed0" / "pairs.pt")
    assert torch.equal(clean, x_clean[chosen]) and torch.equal(protected, x_poison[chosen])
    assert not torch.equal(clean, protected)
    granted = records[("classwise-noise", "pair-spy")]
    assert granted.notes["leaked_pairs"]["k"] == 16 and granted.notes["leaked_pairs"]["indices_sha256"] == indices_sha256(chosen)
    assert granted.defense.hparams["pairs"] == 16
    for key in (("classwise-noise", "no-pairs"), ("classwise-noise", "none")):
        assert "leaked_pairs" not in records[key].notes
    assert records[("classwise-noise", "no-pairs")].notes["defense"]["saw_pairs"] is False
    assert "**Leaked pairs**: `pair-spy` k = 16" in leaderboard.render(tmp_path / "results")


def test_more_pairs_than_protected_images_fail_the_cell_in_one_line(tmp_path, spy):
    s = smoke(tmp_path, spy, "pair-spy")
    s.defense_params["pair-spy"] = {"pairs": 500}
    records = [r for r in run(s) if r.defense.name == "pair-spy"]
    assert records and all(r.status == "failed" and "500 leaked pairs asked of a protected split of 128" in r.error
                           for r in records)


def test_bridgepure_purifies_onto_the_uint8_grid_from_its_pairs(tmp_path, spy):
    s = smoke(tmp_path, spy, "bridgepure")
    records = {r.attack.name: r for r in run(s) if r.defense.name == "bridgepure"}
    assert {r.status for r in records.values()} == {"ok"}, [r.error for r in records.values()]
    assert records["classwise-noise"].notes["leaked_pairs"]["k"] == 32       # the smoke preset's pairs
    from uebench.defenses.bridgepure import BridgePure
    from conftest import make_ctx
    x = torch.rand(20, 3, 16, 16)
    ctx = make_ctx()
    ctx.leaked_pairs = (x[:8], (x[:8] + 0.03).clamp(0, 1))
    out = BridgePure.for_preset("smoke").purify(x, torch.zeros(20, dtype=torch.long), (x[:0], x[:0]), ctx)
    assert out.shape == x.shape and torch.equal(out * 255, (out * 255).round()) and 0 <= out.min() <= out.max() <= 1
