"""Neural tangent generalisation attack (NTGA): poisons that spoil a kernel predictor's
generalisation, crafted with the neural tangent kernel of a surrogate network."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch.func import jacrev, vmap

from uebench.api import Attack, ThreatModel
from uebench.toolkit.perturb import pgd_step, project_linf

Features = object   # what a tangent kernel computes once per image set (see TangentKernel)


class TangentKernel(Protocol):
    """An NTK split in two: per-set ``features`` (differentiable in the images), then the
    kernel matrix ``between`` two sets' features (float64, shape (len(a), len(b)))."""

    def features(self, x: torch.Tensor) -> Features: ...

    def between(self, a: Features, b: Features) -> torch.Tensor: ...


# -- the fully connected surrogate: closed form -----------------------------------------

def fnn_ntk(a: torch.Tensor, b: torch.Tensor, depth: int = 5, w_var: float = 1.76,
            b_var: float = 0.18) -> torch.Tensor:
    """The infinite-width NTK of ``depth`` × (Dense, Erf) between the rows of ``a`` and ``b``.

    Images are flattened to d values; the input covariance is x·x′/d. A Dense layer (NTK
    parameterisation) maps Σ ← W²Σ + b² and Θ ← W²Θ + Σ; an Erf maps
    Σ ← (2/π) arcsin(2Σxy / √((1+2Σxx)(1+2Σyy))) and Θ ← Θ · Σ̇ with
    Σ̇ = (4/π) / √((1+2Σxx)(1+2Σyy) − 4Σxy²) (Williams 1997; Lee et al. 2019; as in Neural
    Tangents' ``stax.Dense`` and ``stax.Erf``). The kernel is taken at the last Erf, with no
    readout layer, like the paper's surrogate. Computed in float64.
    """
    a, b = a.flatten(1).double(), b.flatten(1).double()
    dim = a.shape[1]
    cov = a @ b.T / dim
    var_a, var_b = (a * a).sum(1) / dim, (b * b).sum(1) / dim
    ntk = torch.zeros_like(cov)
    for _ in range(depth):
        cov, var_a, var_b = w_var * cov + b_var, w_var * var_a + b_var, w_var * var_b + b_var
        ntk = w_var * ntk + cov
        norm_sq = (1 + 2 * var_a)[:, None] * (1 + 2 * var_b)[None, :]
        ntk = ntk * (4 / math.pi) / (norm_sq - 4 * cov ** 2).sqrt()
        cov = (2 / math.pi) * torch.asin(2 * cov / norm_sq.sqrt())
        var_a = (2 / math.pi) * torch.asin(2 * var_a / (1 + 2 * var_a))
        var_b = (2 / math.pi) * torch.asin(2 * var_b / (1 + 2 * var_b))
    return ntk


@dataclass
class FNNKernel:
    """The paper's FNN surrogate: its NTK needs nothing but the images themselves."""

    depth: int = 5
    w_var: float = 1.76
    b_var: float = 0.18

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def between(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return fnn_ntk(a, b, self.depth, self.w_var, self.b_var)


# -- the convolutional surrogate: empirical NTK at initialisation ------------------------

class CNNKernel:
    """The empirical NTK, at a seeded random initialisation, of the paper's CNN surrogate:
    2 × (Conv 5×5 stride 2 'same', ReLU), Flatten, Dense, Dense, Dense K, in the NTK
    parameterisation (weights N(0, 1) scaled by √(W²/fan-in), biases by √b²).

    The kernel is the per-output NTK, (1/K) Σ_k ∇θ f_k(x) · ∇θ f_k(x′). The dense head has
    no nonlinearity (as in the official model), so its part has a closed form: a dense
    layer with input u contributes (‖B‖²/K)(s² u·u′ + b²), B being the fixed linear map
    from its output to the logits and s its weight scale. The convolutions' part comes
    from per-image Jacobians (``torch.func.vmap(jacrev)``) of the logits with respect to
    the conv parameters; they hold n × K × (conv parameter count) values per image set.
    Differentiable with respect to the images (the attack needs ∂Θ/∂x).
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, channels: int = 64,
                 dense: tuple[int, ...] = (384, 192), w_var: float = 1.76, b_var: float = 0.18,
                 generator: torch.Generator | None = None, device: torch.device | str = "cpu"):
        c, h, w = image_shape

        def normal(*shape: int) -> torch.Tensor:
            return torch.randn(shape, generator=generator, dtype=torch.float64).to(device)

        self.w_var, self.b_var, self.num_classes = w_var, b_var, num_classes
        self.conv = {"w1": normal(channels, c, 5, 5), "b1": normal(channels),
                     "w2": normal(channels, channels, 5, 5), "b2": normal(channels)}
        out_h, out_w = math.ceil(math.ceil(h / 2) / 2), math.ceil(math.ceil(w / 2) / 2)
        widths = [channels * out_h * out_w, *dense, num_classes]
        self.head = [(normal(n_out, n_in), normal(n_out)) for n_in, n_out in zip(widths[:-1], widths[1:])]
        self.scales = [math.sqrt(w_var / n_in) for n_in in widths[:-1]]
        # Maps from each dense layer's output to the logits, last layer first.
        maps = [torch.eye(num_classes, dtype=torch.float64, device=device)]
        for (weight, _), scale in zip(reversed(self.head), reversed(self.scales)):
            maps.append(maps[-1] @ (scale * weight))
        self.readout = maps.pop()          # conv features -> logits (K × flattened features)
        self.head_gains = [float(m.pow(2).sum()) / num_classes for m in reversed(maps)]

    def conv_features(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = x
        for layer in ("1", "2"):
            weight, bias = params["w" + layer], params["b" + layer]
            pre = math.sqrt(self.w_var / weight[0].numel()) * F.conv2d(h, weight, stride=2, padding=2)
            h = F.relu(pre + math.sqrt(self.b_var) * bias[:, None, None])
        return h.flatten(1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The surrogate's outputs (for checks; the kernel never needs them)."""
        h = self.conv_features(self.conv, x.double())
        for (weight, bias), scale in zip(self.head, self.scales):
            h = scale * h @ weight.T + math.sqrt(self.b_var) * bias
        return h

    def features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = x.double()
        inputs = [self.conv_features(self.conv, x)]          # the input of every dense layer
        for (weight, bias), scale in zip(self.head[:-1], self.scales[:-1]):
            inputs.append(scale * inputs[-1] @ weight.T + math.sqrt(self.b_var) * bias)

        def conv_logits(params, image):
            return self.readout @ self.conv_features(params, image[None])[0]

        jac = vmap(jacrev(conv_logits), in_dims=(None, 0))(self.conv, x)   # name -> (n, K, *shape)
        flat = torch.cat([j.flatten(2) for j in jac.values()], dim=2).flatten(1)   # (n, K·P)
        return inputs, flat

    def between(self, a, b) -> torch.Tensor:
        (inputs_a, jac_a), (inputs_b, jac_b) = a, b
        kernel = jac_a @ jac_b.T / self.num_classes
        for gain, scale, u_a, u_b in zip(self.head_gains, self.scales, inputs_a, inputs_b):
            kernel = kernel + gain * (scale ** 2 * u_a @ u_b.T + self.b_var)
        return kernel


# -- the NTK predictor --------------------------------------------------------------------

def ntk_regression_weights(k_train: torch.Tensor, y_onehot: torch.Tensor, t: float,
                           diag_reg: float = 1e-4) -> torch.Tensor:
    """A = Θ⁻¹ (I − exp(−t Θ / (n K))) Y, so the predictor after gradient flow time t on the
    mean squared error is f̄(x) = Θ(x, X) A (Lee et al. 2019; Neural Tangents'
    ``predict.gradient_descent_mse`` with learning rate 1 and a diagonal regulariser
    ``diag_reg`` × tr(Θ)/n). The matrix functions come from one eigendecomposition of the
    symmetric kernel."""
    n, k = y_onehot.shape
    k_train = 0.5 * (k_train + k_train.T)
    eye = torch.eye(n, dtype=k_train.dtype, device=k_train.device)
    evals, evecs = torch.linalg.eigh(k_train + diag_reg * k_train.diagonal().mean() * eye)
    evals = evals.clamp_min(torch.finfo(evals.dtype).tiny)
    gain = -torch.expm1(-evals * t / (n * k)) / evals      # (1 − e^{−λ t/(nK)}) / λ, stable for small λ
    return evecs @ (gain[:, None] * (evecs.T @ y_onehot.to(evecs.dtype)))


@dataclass
class NTGA(Attack):
    """Yuan & Wu, "Neural Tangent Generalization Attacks", ICML 2021.

    NTGA maximises the validation loss of the NTK predictor trained on the poisoned data,
    f̄(Xv) = Θ(Xv, X+P) Θ(X+P, X+P)⁻¹ (I − exp(−t Θ(X+P, X+P) / (nK))) Y, by projected
    signed-gradient ascent on P in the L∞ ball. The kernel Θ is the NTK of a surrogate: the
    closed-form infinite-width NTK of 5 × (Dense, Erf) (``surrogate="fnn"``) or the
    empirical NTK of a randomly initialised CNN (``surrogate="cnn"``, see :class:`CNNKernel`).
    The protected set is attacked in independent blocks (B-NTGA), which keeps Θ small.

    Defaults (paper / official code, CIFAR-10): ε = 8/255, W² = 1.76, b² = 0.18, t = 64,
    diagonal regulariser 1e-4·tr(Θ)/n, blocks of 512, 10 iterations of 1.1·ε/10, zero start,
    a validation set of 10,000 clean images, cross-entropy on the true validation labels,
    CNN with 64 channels and dense widths 384, 192. Cost: iterations + 1 kernel
    evaluations and gradients per block (about 1.5 s of one CPU core per evaluation for a
    block of 500 CIFAR images and 1,000 validation images). Cheaper presets: ``cpu``
    (8,000 CIFAR images) validates each block on the 4,000 images of the other half, about
    2 min on 2 cores with the FNN; ``demo`` and ``smoke`` use smaller blocks. ``cnn_channels`` is 16 in all presets.

    Released rounded to the nearest level, uint8(255·x' + 0.5) (``release = "round"``): the official
    code saves the float32 array it optimised (``np.save`` of ``x_train_adv`` in ``generate_attack.py``,
    lionelmessi6410/ntga 0bc7308) and its ``evaluate.py`` trains on those floats, so it exports no
    images; a data owner publishing NTGA's poison as images rounds it, which keeps it in the L∞ ball
    (the clean image and ±ε lie on levels).

    The validation split comes from the protected training data, never the test set:
    the protected set is split in two halves (seeded); each block of one half is attacked
    against ``val_size`` clean images drawn from the other half, so every image is
    poisoned and no block is validated on itself.

    Deviations:
    - Faithful PGD by default: each iteration steps from the current perturbation. The
      official code restarts every iteration from the clean block with a step of size ε,
      so its 10 iterations are one FGSM step of size ε; ``official_fgsm=True`` reproduces
      that (computed once, since the repeats are identical).
    - The official code and APBench carve the validation set out of a fixed part of the
      training set and leave it unpoisoned (APBench uses the test set); here the two
      halves validate each other, so all images are poisoned without touching test data.
    - A half is cut into equal blocks of at most ``block_size`` images; the official code
      drops the remainder that does not fill a last block of 512 (it stays clean).
    - The CNN kernel is the empirical NTK of one finite network (official: the
      infinite-width CNN kernel from Neural Tangents, JAX); the FNN kernel is exact.
    """

    name = "ntga"
    release = "round"
    paper = "Yuan & Wu, Neural Tangent Generalization Attacks, ICML"
    year = 2021
    presets = {
        "smoke": {"block_size": 64, "val_size": 64, "iterations": 3, "cnn_channels": 16},
        "demo": {"block_size": 256, "val_size": 512, "cnn_channels": 16, "val_batch": 512},
        # 8,000 CIFAR images: 16 blocks of 500, each validated on all 4,000 images of the other
        # half (measured, small-CNN victim: clean 74.2 %; 1,000 validation images 63.1 %, 4,000
        # images 54.8 %, about 2 min; the paper validates on 10,000).
        "cpu": {"block_size": 512, "val_size": 4000, "cnn_channels": 16, "val_batch": 512},
    }

    eps: float = 8 / 255
    iterations: int = 10
    step_size: float | None = None      # None: 1.1 · eps / iterations (official)
    official_fgsm: bool = False
    surrogate: str = "fnn"              # fnn | cnn
    depth: int = 5                      # (Dense, Erf) blocks of the FNN
    w_var: float = 1.76
    b_var: float = 0.18
    cnn_channels: int = 64
    cnn_dense: tuple[int, ...] = (384, 192)
    t: float = 64.0
    diag_reg: float = 1e-4
    block_size: int = 512
    val_size: int = 10_000
    val_batch: int = 2048               # validation images per kernel evaluation (memory only)

    def __post_init__(self):
        self.cnn_dense = tuple(int(width) for width in self.cnn_dense)
        if self.surrogate not in ("fnn", "cnn"):
            raise ValueError(f"surrogate must be 'fnn' or 'cnn', got {self.surrogate!r}")
        if min(self.iterations, self.block_size, self.val_size, self.val_batch, self.depth) < 1:
            raise ValueError("iterations, block_size, val_size, val_batch and depth must be >= 1")
        if self.step_size is not None and self.step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")

    def threat_model(self) -> ThreatModel:
        return ThreatModel("linf", self.eps)

    def passes_per_image(self) -> int:
        """Kernel evaluations with a gradient, plus the final check, per image."""
        return (1 if self.official_fgsm else self.iterations) + 1

    def kernel(self, ctx) -> TangentKernel:
        if self.surrogate == "fnn":
            return FNNKernel(self.depth, self.w_var, self.b_var)
        return CNNKernel(ctx.image_shape, ctx.num_classes, self.cnn_channels, self.cnn_dense,
                         self.w_var, self.b_var, ctx.generator(3), ctx.device)

    # -- the objective ---------------------------------------------------------------
    def validation_loss(self, kernel: TangentKernel, x_train: torch.Tensor, y_train: torch.Tensor,
                        x_val: torch.Tensor, y_val: torch.Tensor, num_classes: int,
                        need_grad: bool = False) -> tuple[float, float, torch.Tensor | None]:
        """The NTK predictor trained on ``x_train`` (a block), scored on the validation set:
        (mean cross-entropy, accuracy, ∂loss/∂x_train or None).

        Validation images go through the kernel ``val_batch`` at a time; the gradient of
        each chunk's loss is accumulated, so memory does not grow with ``val_size``.
        """
        x_train = x_train.detach().requires_grad_(need_grad)
        with torch.set_grad_enabled(need_grad):
            train_features = kernel.features(x_train)
            weights = ntk_regression_weights(kernel.between(train_features, train_features),
                                             F.one_hot(y_train, num_classes), self.t, self.diag_reg)
            weights_leaf = weights.detach().requires_grad_(need_grad)
            loss, correct = 0.0, 0
            for start in range(0, len(x_val), self.val_batch):
                with torch.no_grad():
                    val_features = kernel.features(x_val[start:start + self.val_batch])
                logits = kernel.between(val_features, train_features) @ weights_leaf
                labels = y_val[start:start + self.val_batch]
                chunk_loss = F.cross_entropy(logits, labels, reduction="sum") / len(x_val)
                if need_grad:   # into x_train.grad (through Θ(Xv, X)) and weights_leaf.grad
                    chunk_loss.backward(retain_graph=True)
                loss += float(chunk_loss.detach())
                correct += int((logits.argmax(1) == labels).sum())
            if need_grad:       # then the path through Θ(X, X)
                weights.backward(weights_leaf.grad)
        return loss, correct / len(x_val), (x_train.grad if need_grad else None)

    def attack_block(self, kernel: TangentKernel, x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor,
                     y_val: torch.Tensor, num_classes: int, on_step=lambda: None) -> tuple[torch.Tensor, dict]:
        """Poison one block; returns the perturbed block and the predictor's validation
        loss and accuracy before and after."""
        step_size = self.step_size or 1.1 * self.eps / self.iterations
        delta = torch.zeros_like(x)
        clean_loss, clean_acc, grad = self.validation_loss(kernel, x, y, x_val, y_val, num_classes, True)
        if self.official_fgsm:    # every official iteration repeats this step from the clean block
            delta = project_linf(self.eps * grad.sign(), x, self.eps)
            on_step()
        else:
            for iteration in range(self.iterations):
                if iteration > 0:
                    grad = self.validation_loss(kernel, x + delta, y, x_val, y_val, num_classes, True)[2]
                delta = pgd_step(delta, grad.to(delta.dtype), step_size, self.eps, x)
                on_step()
        loss, acc, _ = self.validation_loss(kernel, x + delta, y, x_val, y_val, num_classes)
        return x + delta, {"clean_loss": clean_loss, "clean_acc": clean_acc, "loss": loss, "acc": acc}

    def generate(self, x, y, ctx):
        if len(x) < 2:
            raise ValueError("NTGA needs at least 2 images (one half validates the other)")
        x, y = x.to(ctx.device), y.to(ctx.device)
        kernel = self.kernel(ctx)
        generator = ctx.generator(1)
        halves = torch.randperm(len(x), generator=generator).tensor_split(2)
        plan = []   # (block indices, validation indices)
        for half, other in ((halves[0], halves[1]), (halves[1], halves[0])):
            val_idx = other[torch.randperm(len(other), generator=generator)[:self.val_size]]
            plan += [(block, val_idx) for block in half.tensor_split(math.ceil(len(half) / self.block_size))]
        steps_per_block = 1 if self.official_fgsm else self.iterations
        bar = ctx.pbar(total=len(plan) * steps_per_block, desc=self.name)
        poisoned = x.clone()
        stats = []
        for block, val_idx in plan:
            block, val_idx = block.to(ctx.device), val_idx.to(ctx.device)
            poisoned[block], block_stats = self.attack_block(
                kernel, x[block], y[block], x[val_idx], y[val_idx], ctx.num_classes, lambda: bar.update(1))
            stats.append((len(block), block_stats))
        bar.close()
        weight = sum(n for n, _ in stats)
        ctx.notes.update({f"ntga_val_{k}": round(sum(n * s[k] for n, s in stats) / weight, 4)
                          for k in ("clean_loss", "loss", "clean_acc", "acc")})
        ctx.notes.update({"ntga_surrogate": self.surrogate, "ntga_blocks": len(plan),
                          "ntga_val_images_per_block": len(plan[0][1]),
                          "ntga_update": "official one FGSM step of size eps" if self.official_fgsm else "PGD"})
        return poisoned
