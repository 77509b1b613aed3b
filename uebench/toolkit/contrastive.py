"""SimCLR pre-training and a linear probe: the contrastive protocol's recipe and its pieces.

A contrastive table asks whether a poison also stops a victim that learns *without*
labels. The contrastive protocol (:mod:`uebench.protocols.contrastive`) trains a SimCLR
encoder (the table's architecture's ``features`` plus a two-layer projection head,
:func:`make_simclr`, :func:`pretrain_simclr`) on the (defended) training images alone,
freezes it, fits a linear probe on its features with the training labels
(:func:`fit_linear_probe`), and returns backbone + probe as one classifier of [0, 1] images,
so the runner measures clean test accuracy exactly as for the supervised protocol.

The recipe follows He, Zha and Katabi (ICLR 2023, "Indiscriminate Poisoning Attacks on
Unsupervised Contrastive Learning"), whose released code evaluates every poison this
way: SimCLR with temperature 0.5, batch 512, SGD lr 0.5 (momentum 0.9, wd 1e-4) with a
10-epoch linear warm-up and cosine decay to lr/1000, random resized crop 0.2–1, flip,
colour jitter 0.4/0.4/0.4/0.1 (p 0.8) and grayscale (p 0.2); then a linear probe for
100 epochs, SGD decayed ×0.2 at 60, 75 and 90 % of training, on crop+flip views.
The augmentations are kornia's, so they are differentiable: the contrastive attacks
(``ucl``, ``tue``) reuse :func:`contrastive_loss` to optimise noise through them.

As in the official code, the loss is multiplied by temperature / 0.07 (inherited from
the SupContrast code; it multiplies the effective learning rate by about 7); set
``base_temperature = temperature`` for the plain NT-Xent.

Settings come from :class:`ContrastiveConfig`; a table overrides them through
``ctx.contrastive`` (a dict of field values). The values used are written to
``ctx.notes["contrastive_protocol"]`` for the record.

Deviations from the released code:

- The probe is fitted on the training set it is given (the protected, possibly
  defended images, the only labelled data in the benchmark's threat model), not on the
  clean CIFAR training set, and the last epoch's probe is returned rather than the
  epoch with the best *test* accuracy (which selected on the test set).
- The probe sees standardised features (the training features' mean and std, folded
  into the returned linear layer; like the affine-free BatchNorm before MAE's linear
  probe) with lr 0.1; the official probe uses raw features and lr 1, which needs its
  ~10,000 steps to converge: measured on 2,000 CIFAR-10 images with 30 epochs, raw
  features + lr 1 gave 25.5 % test accuracy where standardised + lr 0.1 gave 34.7 %
  (the same frozen, untrained small CNN).
- The SimCLR loss is averaged over the 2N anchors of one batch on one device (the
  official code gathers across GPUs, which is the same loss for the same global batch).
- The warm-up is capped at a tenth of the epochs, so short runs are not all warm-up;
  it applies at every batch size (the official code warms up only above batch 256).
- Colour jitter and grayscale apply to 3-channel images only; 1-channel images get
  crop and flip.
- A defense's ``augment`` hook, if any, runs on every SimCLR view; its ``loss`` hook
  does not apply (the loss is the contrastive one).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import kornia.augmentation as K
import torch
import torch.nn as nn
import torch.nn.functional as F

from uebench.train import autocast, batches

if TYPE_CHECKING:
    from uebench.api import Defense
    from uebench.context import Context


@dataclass
class ContrastiveConfig:
    """SimCLR + linear-probe settings; the defaults are the published protocol (CIFAR-10, ResNet-18)."""

    arch: str | None = None            # encoder architecture; None: the table's model (ResNet-18 on the paper preset)
    epochs: int = 1000                 # SimCLR epochs (He et al. re-train every victim for 1000)
    batch_size: int = 512
    lr: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 10.0        # linear warm-up from warmup_from (capped at epochs / 10)
    warmup_from: float = 0.01
    min_lr_ratio: float = 1e-3         # cosine decays to lr · min_lr_ratio (official: lr · 0.1³)
    temperature: float = 0.5
    base_temperature: float = 0.07     # loss × temperature / base_temperature, as the official code
    proj_dim: int = 128                # projection head: feature_dim → feature_dim → proj_dim
    crop_scale: tuple[float, float] = (0.2, 1.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    probe_epochs: int = 100
    probe_batch_size: int = 512
    probe_lr: float = 0.1               # on standardised features (official: 1.0 on raw features)
    probe_momentum: float = 0.9
    probe_weight_decay: float = 0.0
    probe_milestones: tuple[float, ...] = (0.6, 0.75, 0.9)  # fractions of probe_epochs (official: 60, 75, 90 of 100)
    probe_decay: float = 0.2
    probe_augment: bool = True         # crop+flip views every probe epoch; False: features of the images, once
    probe_standardize: bool = True     # standardise features with the training set's mean and std
    amp: bool = True                   # bf16 autocast on CUDA

    def __post_init__(self):
        checks = [(self.epochs >= 0, "epochs must be >= 0"), (self.batch_size >= 2, "batch_size must be >= 2"),
                  (self.lr > 0, "lr must be > 0"), (self.temperature > 0, "temperature must be > 0"),
                  (self.probe_epochs >= 1, "probe_epochs must be >= 1"),
                  (self.probe_batch_size >= 1, "probe_batch_size must be >= 1")]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"ContrastiveConfig: {message}")
        self.crop_scale = tuple(self.crop_scale)
        self.jitter = tuple(self.jitter)
        self.probe_milestones = tuple(self.probe_milestones)

    @property
    def loss_scale(self) -> float:
        return self.temperature / self.base_temperature

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def contrastive_config(ctx: "Context") -> ContrastiveConfig:
    """The table's settings: the defaults with ``ctx.contrastive`` applied."""
    overrides = dict(ctx.contrastive)
    known = {f.name for f in dataclasses.fields(ContrastiveConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown contrastive setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return ContrastiveConfig(**overrides)


# -- the pieces: augmentation, loss, model -------------------------------------------

def simclr_augmentation(channels: int, size: tuple[int, int], cfg: ContrastiveConfig) -> nn.Module:
    """SimCLR's views as a differentiable kornia pipeline on [0, 1] batches.

    Crop (``cfg.crop_scale``) and flip always; colour jitter and random grayscale on
    3-channel images only (they are undefined on one channel).
    """
    ops: list[nn.Module] = [K.RandomResizedCrop(tuple(size), scale=cfg.crop_scale, cropping_mode="resample"),
                            K.RandomHorizontalFlip()]
    if channels == 3:
        ops += [K.ColorJitter(*cfg.jitter, p=cfg.jitter_p), K.RandomGrayscale(p=cfg.grayscale_p)]
    return nn.Sequential(*ops)


def simclr_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent (InfoNCE) of two batches of projections, where row i of ``z1`` and of ``z2``
    are two views of image i; averaged over all 2N anchors.

    Each anchor's logits are the cosine similarities to the 2N − 1 other views divided by
    the temperature, and its target is its partner view. Identical, well-spread views give
    the minimum: log(1 + 2(N−1)·exp(−(1 + 1/(N−1))/T)) for N views on a regular simplex.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.T / temperature
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pairs, float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, partner)


class SimCLR(nn.Module):
    """An encoder backbone plus the two-layer MLP projection head (d → d → proj_dim)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, proj_dim: int = 128):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.ReLU(inplace=True),
                                  nn.Linear(feature_dim, proj_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def make_simclr(ctx: "Context", arch: str | None, cfg: ContrastiveConfig) -> tuple[nn.Module, SimCLR]:
    """A fresh classifier of ``arch`` and a SimCLR model sharing its ``features``."""
    torch.manual_seed(ctx.seed)           # initial weights depend on the seed only, not on what ran before
    classifier = ctx.make_model(arch or cfg.arch)
    simclr = SimCLR(classifier.features, classifier.fc.in_features, cfg.proj_dim)
    return classifier.to(ctx.device), simclr.to(ctx.device)


def contrastive_loss(model: SimCLR, augment: nn.Module, images: torch.Tensor,
                     cfg: ContrastiveConfig, defense: "Defense | None" = None,
                     labels: torch.Tensor | None = None) -> torch.Tensor:
    """The (scaled) SimCLR loss of two random views of each image; differentiable in ``images``.

    Both views go through the model as one batch (BatchNorm sees 2N samples, as in the
    official code). ``defense.augment`` (with ``labels``) transforms each view.
    """
    views = [augment(images), augment(images)]
    if defense is not None:
        views = [defense.augment(v, labels)[0] for v in views]
    with autocast(images.device, cfg.amp):
        z = model(torch.cat(views).contiguous(memory_format=torch.channels_last))
    z1, z2 = z.float().chunk(2)
    return simclr_loss(z1, z2, cfg.temperature) * cfg.loss_scale


def learning_rate(cfg: ContrastiveConfig, step: int, total: int, warmup: int = 0) -> float:
    """Cosine decay from ``cfg.lr`` to ``cfg.lr · min_lr_ratio`` over ``total`` steps, after a
    linear warm-up from ``cfg.warmup_from`` over the first ``warmup`` steps."""
    low = cfg.lr * cfg.min_lr_ratio

    def cosine(s: int) -> float:
        return low + (cfg.lr - low) * (1 + math.cos(math.pi * s / max(1, total))) / 2

    if step < warmup:
        return cfg.warmup_from + step / warmup * (cosine(warmup) - cfg.warmup_from)
    return cosine(step)


def sgd(model: nn.Module, cfg: ContrastiveConfig) -> torch.optim.SGD:
    """The encoder optimiser of the official code (weight decay on every parameter)."""
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


# -- the protocol ---------------------------------------------------------------------

def pretrain_simclr(model: SimCLR, x: torch.Tensor, cfg: ContrastiveConfig, ctx: "Context",
                    defense: "Defense | None" = None, y: torch.Tensor | None = None) -> SimCLR:
    """Train ``model`` with the SimCLR loss on the images ``x`` (labels are never used,
    except by a defense's ``augment`` hook); returns it in eval mode."""
    device = ctx.device
    x = x.to(device)
    y = y.to(device) if y is not None else None
    batch = min(cfg.batch_size, len(x))
    steps_per_epoch = max(1, len(x) // batch)          # drop_last, as the official loader
    total = cfg.epochs * steps_per_epoch
    warmup = round(min(cfg.warmup_epochs, cfg.epochs / 10) * steps_per_epoch)
    augment = simclr_augmentation(x.shape[1], tuple(x.shape[-2:]), cfg)
    opt = sgd(model, cfg)
    gen = ctx.generator(7001)
    model.to(memory_format=torch.channels_last).train()
    step = 0
    bar = ctx.pbar(total=cfg.epochs, desc="simclr")
    epoch_losses = []   # recorded: a shortcut in the data shows as a loss that falls faster than on clean data
    for _ in range(cfg.epochs):
        total_loss = torch.zeros((), device=device)
        for idx in batches(len(x), batch, gen)[:steps_per_epoch]:
            idx = idx.to(device)
            set_lr(opt, learning_rate(cfg, step, total, warmup))
            loss = contrastive_loss(model, augment, x[idx], cfg, defense, y[idx] if y is not None else None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += loss.detach()
            step += 1
        epoch_losses.append(round(total_loss.item() / steps_per_epoch, 4))
        bar.update(1)
        bar.set_postfix(loss=f"{epoch_losses[-1]:.3f}")
    bar.close()
    ctx.notes["simclr_epoch_loss"] = epoch_losses
    return model.eval()


@torch.no_grad()
def extract_features(backbone: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 1024,
                     amp: bool = True, transform: nn.Module | None = None) -> torch.Tensor:
    """Features of ``x`` (optionally ``transform``-ed per chunk) from ``backbone`` in eval mode, as float32."""
    backbone.eval()
    out = []
    for i in range(0, len(x), batch_size):
        chunk = x[i:i + batch_size].to(device)
        if transform is not None:
            chunk = transform(chunk)
        with autocast(device, amp):
            out.append(backbone(chunk).float())
    return torch.cat(out)


def fit_linear_probe(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     cfg: ContrastiveConfig, ctx: "Context") -> nn.Module:
    """Fit ``classifier.fc`` on the frozen ``classifier.features`` of ``x``; returns the classifier in eval mode.

    With ``cfg.probe_augment`` every epoch sees fresh crop+flip views (features are
    recomputed); otherwise the features of the images are computed once. With
    ``cfg.probe_standardize`` the probe sees features standardised by the mean and std
    of the training images' features, and the standardisation is folded into ``fc``
    afterwards, so the returned classifier is still ``fc(features(x))``.
    """
    device = ctx.device
    x, y = x.to(device), y.to(device)
    backbone, probe = classifier.features.eval(), classifier.fc
    probe.reset_parameters()
    opt = torch.optim.SGD(probe.parameters(), lr=cfg.probe_lr, momentum=cfg.probe_momentum,
                          weight_decay=cfg.probe_weight_decay)
    views = nn.Sequential(K.RandomResizedCrop(tuple(x.shape[-2:]), scale=cfg.crop_scale, cropping_mode="resample"),
                          K.RandomHorizontalFlip())
    milestones = [round(f * cfg.probe_epochs) for f in cfg.probe_milestones]
    gen = ctx.generator(7002)
    features = extract_features(backbone, x, device, amp=cfg.amp)
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    if not cfg.probe_standardize:
        mean, std = torch.zeros_like(mean), torch.ones_like(std)
    for epoch in ctx.pbar(range(cfg.probe_epochs), desc="linear probe"):
        set_lr(opt, cfg.probe_lr * cfg.probe_decay ** sum(epoch >= m for m in milestones))
        if cfg.probe_augment:
            features = extract_features(backbone, x, device, amp=cfg.amp, transform=views)
        for idx in batches(len(x), cfg.probe_batch_size, gen):
            idx = idx.to(device)
            loss = F.cross_entropy(probe((features[idx] - mean) / std), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():   # fc((f − μ)/σ) = (W/σ) f + (b − W μ/σ)
        probe.bias.sub_(probe.weight @ (mean / std))
        probe.weight.div_(std)
    return classifier.eval()

