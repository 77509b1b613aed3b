"""NTGA, the neural tangent generalization attack (attacks/ntga.py)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import jacrev, vmap

from conftest import tiny_images
from uebench.attacks.ntga import NTGA, CNNKernel, fnn_ntk, ntk_regression_weights
from uebench.toolkit.perturb import project_linf

EPS = 8 / 255


def empirical_fnn_ntk(x, depth, width, seed):
    """The NTK of one finite (Dense, Erf) network in the NTK parameterisation, read out by a
    fixed random unit vector (so it estimates the per-unit kernel), from autograd gradients."""
    g = torch.Generator().manual_seed(seed)
    layers, fan_in = [], x.shape[1]
    for _ in range(depth):
        layers.append((torch.randn(width, fan_in, generator=g, dtype=torch.float64).requires_grad_(),
                       torch.randn(width, generator=g, dtype=torch.float64).requires_grad_(), fan_in))
        fan_in = width
    readout = torch.randn(width, generator=g, dtype=torch.float64) / math.sqrt(width)
    h = x
    for weight, bias, fan in layers:
        h = torch.erf(math.sqrt(1.76 / fan) * h @ weight.T + math.sqrt(0.18) * bias)
    out = h @ readout
    params = [p for weight, bias, _ in layers for p in (weight, bias)]
    jac = torch.stack([torch.cat([g_.flatten() for g_ in torch.autograd.grad(out[i], params, retain_graph=True)])
                       for i in range(len(x))])
    return jac @ jac.T


def block_and_validation():
    x, y = tiny_images(n=96)
    return x[:48], y[:48], x[48:], y[48:]


def test_fnn_ntk_is_symmetric_psd_and_consistent_between_sets():
    x = torch.rand(20, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    k = fnn_ntk(x, x)
    assert k.dtype == torch.float64
    assert torch.allclose(k, k.T, atol=1e-12)
    assert torch.linalg.eigvalsh(k).min() > -1e-10 * k.diagonal().max()
    assert torch.allclose(fnn_ntk(x[:5], x[5:]), k[:5, 5:], atol=1e-12)


def test_fnn_ntk_one_layer_by_hand():
    x = torch.tensor([[0.2, 0.4, 0.6, 0.8], [1.0, 0.0, 0.5, 0.5]], dtype=torch.float64)
    # Dense: Σ = 1.76·x·x'/4 + 0.18 and Θ = Σ; Erf: Θ·(4/π)/√((1+2Σxx)(1+2Σyy) − 4Σxy²).
    s11, s22, s12 = 1.76 * 1.2 / 4 + 0.18, 1.76 * 1.5 / 4 + 0.18, 1.76 * 0.9 / 4 + 0.18
    expected = [[s11 * 4 / math.pi / math.sqrt(1 + 4 * s11), s12 * 4 / math.pi / math.sqrt((1 + 2 * s11) * (1 + 2 * s22) - 4 * s12 ** 2)],
                [0.0, s22 * 4 / math.pi / math.sqrt(1 + 4 * s22)]]
    expected[1][0] = expected[0][1]
    assert torch.allclose(fnn_ntk(x, x, depth=1), torch.tensor(expected, dtype=torch.float64), rtol=1e-12)


@pytest.mark.parametrize("depth, width, tolerance", [(1, 4096, 0.03), (3, 1024, 0.08)])
def test_fnn_ntk_matches_wide_finite_network(depth, width, tolerance):
    x = torch.rand(5, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = fnn_ntk(x, x, depth=depth)
    estimate = sum(empirical_fnn_ntk(x, depth, width, seed) for seed in range(2)) / 2
    assert (estimate - exact).norm() / exact.norm() < tolerance


def test_cnn_kernel_equals_brute_force_jacobian_contraction():
    kernel = CNNKernel((2, 8, 8), num_classes=3, channels=3, dense=(5, 4), generator=torch.Generator().manual_seed(0))
    a = torch.rand(4, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    b = torch.rand(3, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    # Every parameter of the network as one dict, differentiated together.
    params = dict(kernel.conv)
    for i, (weight, bias) in enumerate(kernel.head):
        params[f"dense{i}.w"], params[f"dense{i}.b"] = weight, bias

    def logits(p, image):
        h = kernel.conv_features(p, image[None].double())[0]
        for i, scale in enumerate(kernel.scales):
            h = scale * p[f"dense{i}.w"] @ h + math.sqrt(kernel.b_var) * p[f"dense{i}.b"]
        return h

    assert torch.allclose(vmap(logits, in_dims=(None, 0))(params, a), kernel.logits(a))

    def jacobian(images):
        jac = vmap(jacrev(logits), in_dims=(None, 0))(params, images)
        return torch.cat([j.flatten(2) for j in jac.values()], dim=2)        # (n, K, P)

    brute = torch.einsum("nkp,mkp->nm", jacobian(a), jacobian(b)) / 3
    fast = kernel.between(kernel.features(a), kernel.features(b))
    assert torch.allclose(fast, brute, rtol=1e-10, atol=1e-10)
    square = kernel.between(kernel.features(a), kernel.features(a))
    assert torch.allclose(square, square.T) and torch.linalg.eigvalsh(square).min() > -1e-9


def test_cnn_kernel_is_differentiable_in_the_images():
    kernel = CNNKernel((1, 6, 6), num_classes=2, channels=2, dense=(3, 3), generator=torch.Generator().manual_seed(0))
    a = torch.rand(3, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    b = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    fb = kernel.features(b)
    assert torch.autograd.gradcheck(lambda v: kernel.between(kernel.features(v), fb).sum(), (a,))


def test_regression_weights_match_matrix_exponential_and_its_gradient():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 6, generator=g, dtype=torch.float64, requires_grad=True)
    y = F.one_hot(torch.arange(12) % 3, 3).double()

    def reference(xx, t):
        k = fnn_ntk(xx, xx)
        k_reg = k + 1e-4 * k.diagonal().mean() * torch.eye(12, dtype=torch.float64)
        decay = torch.linalg.matrix_exp(-t * k_reg / y.numel())
        return torch.linalg.solve(k_reg, (torch.eye(12, dtype=torch.float64) - decay) @ y)

    for t in (64.0, 5_000.0):
        ours = ntk_regression_weights(fnn_ntk(x, x), y, t)
        ref = reference(x, t)
        assert torch.allclose(ours, ref, rtol=1e-8, atol=1e-10)
        (grad_ours,) = torch.autograd.grad(ours.pow(2).sum(), x)
        (grad_ref,) = torch.autograd.grad(ref.pow(2).sum(), x)
        assert torch.allclose(grad_ours, grad_ref, rtol=1e-6, atol=1e-9)


def test_long_training_interpolates_the_labels():
    x = torch.rand(10, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.arange(10) % 2
    k = fnn_ntk(x, x)
    fitted = k @ ntk_regression_weights(k, F.one_hot(y, 2), t=1e9, diag_reg=0.0)
    assert torch.allclose(fitted, F.one_hot(y, 2).double(), atol=1e-4)


@pytest.mark.parametrize("surrogate", ["fnn", "cnn"])
def test_ntga_raises_the_predictors_validation_loss(surrogate, ctx):
    attack = NTGA.for_preset("smoke", surrogate=surrogate, iterations=5)
    kernel = attack.kernel(ctx)
    xb, yb, xv, yv = block_and_validation()
    poisoned, stats = attack.attack_block(kernel, xb, yb, xv, yv, ctx.num_classes)
    clean_loss = attack.validation_loss(kernel, xb, yb, xv, yv, ctx.num_classes)[0]
    poisoned_loss = attack.validation_loss(kernel, poisoned, yb, xv, yv, ctx.num_classes)[0]
    assert poisoned_loss > clean_loss * 1.02, (clean_loss, poisoned_loss)
    assert stats["clean_loss"] == pytest.approx(clean_loss) and stats["loss"] == pytest.approx(poisoned_loss)
    assert (poisoned - xb).abs().max() <= EPS + 1e-6


def test_ntga_generate_reports_a_higher_validation_loss(tiny, ctx):
    x, y = tiny
    NTGA.for_preset("smoke")(x, y, ctx)
    assert ctx.notes["ntga_val_loss"] > ctx.notes["ntga_val_clean_loss"]
    assert ctx.notes["ntga_blocks"] == 2    # two halves of 32, each one block


def test_official_fgsm_is_one_signed_step_of_size_eps(ctx):
    attack = NTGA.for_preset("smoke", official_fgsm=True)
    kernel = attack.kernel(ctx)
    xb, yb, xv, yv = block_and_validation()
    _, _, grad = attack.validation_loss(kernel, xb, yb, xv, yv, ctx.num_classes, need_grad=True)
    expected = xb + project_linf(EPS * grad.sign(), xb, EPS)
    poisoned, _ = attack.attack_block(kernel, xb, yb, xv, yv, ctx.num_classes)
    assert torch.equal(poisoned, expected)
    moved = (poisoned - xb).abs()
    inside = (xb > EPS) & (xb < 1 - EPS)                     # pixels the clipping cannot touch
    assert torch.allclose(moved[inside], torch.full_like(moved[inside], EPS))


def test_faithful_pgd_steps_from_the_current_perturbation(ctx):
    """Faithful PGD with a small step stays well inside the ball after one iteration and
    grows with more iterations; the official variant jumps to the ball's surface at once."""
    xb, yb, xv, yv = block_and_validation()
    step = EPS / 10
    one = NTGA.for_preset("smoke", iterations=1, step_size=step)
    three = NTGA.for_preset("smoke", iterations=3, step_size=step)
    kernel = one.kernel(ctx)
    after_one = (one.attack_block(kernel, xb, yb, xv, yv, ctx.num_classes)[0] - xb).abs().max()
    after_three = (three.attack_block(kernel, xb, yb, xv, yv, ctx.num_classes)[0] - xb).abs().max()
    assert after_one == pytest.approx(step, rel=1e-5)
    assert after_three > 2 * step


def test_validation_split_never_contains_the_attacked_block(tiny, ctx, monkeypatch):
    x, y = tiny
    attack = NTGA.for_preset("smoke")
    seen = []
    original = NTGA.attack_block

    def spy(self, kernel, xb, yb, xv, yv, num_classes, on_step=lambda: None):
        seen.append((xb.clone(), xv.clone()))
        return original(self, kernel, xb, yb, xv, yv, num_classes, on_step)

    monkeypatch.setattr(NTGA, "attack_block", spy)
    attack(x, y, ctx)
    covered = torch.cat([xb for xb, _ in seen])
    assert len(covered) == len(x)                            # every image is attacked once
    for xb, xv in seen:
        assert not (xb.flatten(1)[:, None] == xv.flatten(1)[None]).all(-1).any()
