"""Transferable unlearnable examples (TUE): noise made linearly separable by class."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from uebench.api import Attack, ThreatModel
from uebench.attacks.em import exported
from uebench.toolkit.contrastive import ContrastiveConfig, contrastive_loss, make_simclr, simclr_augmentation
from uebench.toolkit.perturb import batches, pgd_step, uniform_start


def class_separability(delta: torch.Tensor, y: torch.Tensor, tiny: float = 1e-5) -> torch.Tensor:
    """The class-wise separability discriminant (CSD) of a batch of perturbations; lower is more separable.

    With μ_k the mean of the flattened perturbations of class k and σ_k their mean L2
    distance to μ_k: the mean over ordered pairs of distinct classes i ≠ j present in the
    batch of (σ_i + σ_j) / ‖μ_i − μ_j‖ (a Davies–Bouldin-like ratio; ``tiny`` keeps it
    finite, as in the official code). Zero when fewer than two classes are present.
    """
    flat = delta.flatten(1).float()
    classes, which = y.unique(return_inverse=True)
    k = len(classes)
    if k < 2:
        return flat.sum() * 0
    counts = torch.bincount(which, minlength=k).to(flat.dtype)
    centres = torch.zeros(k, flat.shape[1], dtype=flat.dtype, device=flat.device).index_add(0, which, flat)
    centres = centres / counts[:, None]
    # sqrt(· + tiny²) rather than norm(): finite gradients for a point sitting on its centre
    to_centre = ((flat - centres[which]) ** 2).sum(1).add(tiny ** 2).sqrt()
    spread = torch.zeros(k, dtype=flat.dtype, device=flat.device).index_add(0, which, to_centre) / counts
    gaps = ((centres[:, None] - centres[None]) ** 2).sum(-1).add(tiny ** 2).sqrt()
    ratio = (spread[:, None] + spread[None] + tiny) / (gaps + tiny)
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=flat.device)
    return ratio[off_diagonal].mean()


@dataclass
class TUE(Attack):
    """Transferable Unlearnable Examples, Ren, Xu, Wan, Ma, Sun and Tang, ICLR 2023.

    Sample-wise noise δ (‖δ‖∞ ≤ ε, random start) minimises
    ``w_ssl · L_SimCLR(clip(x + δ)) + csd_weight · CSD(δ, y)``: the contrastive loss of a
    SimCLR surrogate, as in contrastive poisoning, plus the class-wise separability
    discriminant that pulls each class's perturbations together and pushes the class
    means apart, so a linear layer separates the classes by their noise alone. Each epoch
    walks the shuffled data in chunks of ``train_step`` batches: the surrogate trains on
    a chunk (Adam), then every batch of a fresh shuffled pass gets ``pgd_steps`` signed
    steps of ``step_size`` with the surrogate fixed (eval mode), as the official loop.

    Defaults: the released SimCLR command for CIFAR-10 (``demo.sh`` of the official
    repository): 40 epochs, 20 PGD steps of 0.8/255, train_step 20, batch 512, ε = 8/255,
    random start, temperature 0.5, Adam lr 1e-3 (wd 1e-6), **w_ssl = 0** and CSD weight
    0.1. With w_ssl = 0 the released SimCLR configuration optimises the CSD term alone
    (the paper's objective with the contrastive term switched off); the MoCo command uses
    w_ssl = 1 and CSD weight 1. Set ``w_ssl`` > 0 for the full bi-level objective.

    Deviations:
    - CSD is differentiated through both the class spreads σ and the class means; the
      official code rebuilds σ with ``torch.tensor(list)``, which detaches it, so only
      the distances between class means receive gradient there (a bug against the
      paper's formula).
    - With ``w_ssl = 0`` the surrogate cannot influence δ, so it is not built or trained
      (the output is the same as running the official loop).
    - The surrogate is the table's architecture's ``features`` with a two-layer
      projection head (the official SimCLR model is a ResNet-18 with a BN projection
      head); views are kornia's differentiable SimCLR augmentations.
    - δ is projected so that x + δ stays in [0, 1] after every step.

    The official export: the supervised evaluation (``TransferCIFAR10Pair`` in ``utils.py``,
    renjie3/TUE 6b3752b) adds 255·δ, clamped to ±9 levels (no effect within ε = 8/255), to the
    uint8 images in float32, clips to [0, 255] and truncates with ``astype(np.uint8)``, the
    arithmetic of EM's dataset class: TUE releases its images that way itself (EM's
    :func:`attacks.em.exported`, bit for bit; ``release = "truncate"`` then passes the levels
    through). :meth:`noise` returns δ before the export, clamped to ±ε as the official noise is.
    """

    name = "tue"
    release = "truncate"
    paper = "Ren, Xu, Wan, Ma, Sun, Tang, Transferable Unlearnable Examples, ICLR"
    year = 2023
    target = "contrastive"
    presets = {
        "smoke": {"epochs": 2, "pgd_steps": 5, "batch_size": 128},
        "demo": {"epochs": 10, "pgd_steps": 10, "batch_size": 256},
        "cpu": {"epochs": 10, "batch_size": 512},
    }

    eps: float = 8 / 255
    epochs: int = 40
    pgd_steps: int = 20
    step_size: float = 0.8 / 255
    train_step: int = 20                # surrogate batches between two noise passes
    batch_size: int = 512
    w_ssl: float = 0.0                  # weight of the contrastive loss (released SimCLR config: 0)
    csd_weight: float = 0.1             # λ, weight of CSD
    temperature: float = 0.5
    encoder_lr: float = 1e-3            # Adam, as the official SimCLR surrogate
    encoder_weight_decay: float = 1e-6
    random_start: bool = True
    arch: str | None = None             # surrogate encoder; None: the table's model

    def __post_init__(self):
        if self.epochs < 0 or self.pgd_steps < 1 or self.train_step < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 0, pgd_steps and train_step >= 1, batch_size >= 2")
        if self.w_ssl == 0 and self.csd_weight == 0:
            raise ValueError("w_ssl and csd_weight are both 0: nothing to minimise")

    def threat_model(self) -> ThreatModel:
        return ThreatModel("linf", self.eps)

    def generate(self, x, y, ctx):
        return exported(x.to(ctx.device), self.noise(x, y, ctx))

    def noise(self, x, y, ctx) -> torch.Tensor:
        """The optimised δ (x + δ in [0, 1]), before the official export."""
        device = ctx.device
        x, y = x.to(device), y.to(device)
        gen = ctx.generator(201)
        delta = uniform_start(x, self.eps, gen) if self.random_start else torch.zeros_like(x)
        delta = (x + delta).clamp(0, 1) - x
        # the official SimCLR surrogate uses the plain NT-Xent (no temperature / 0.07 factor)
        cfg = ContrastiveConfig(batch_size=self.batch_size, temperature=self.temperature,
                                base_temperature=self.temperature)
        surrogate = augment = opt = None
        if self.w_ssl:
            _, surrogate = make_simclr(ctx, self.arch, cfg)
            surrogate.to(memory_format=torch.channels_last)
            augment = simclr_augmentation(x.shape[1], tuple(x.shape[-2:]), cfg)
            opt = torch.optim.Adam(surrogate.parameters(), lr=self.encoder_lr, weight_decay=self.encoder_weight_decay)
        ctx.notes[self.name] = {"surrogate": (self.arch or ctx.model) if self.w_ssl else "none (w_ssl = 0)"}
        batch = min(self.batch_size, len(x))
        bar = ctx.pbar(total=self.epochs, desc=self.name)
        for _ in range(self.epochs):
            train_order = batches(len(x), batch, gen)
            # the official loop: a noise pass after every chunk of train_step surrogate batches,
            # including the (possibly empty) last chunk
            for chunk in range(len(train_order) // self.train_step + 1):
                if surrogate is not None:
                    surrogate.train()
                    for idx in train_order[chunk * self.train_step:(chunk + 1) * self.train_step]:
                        idx = idx.to(device)
                        loss = contrastive_loss(surrogate, augment, (x[idx] + delta[idx]).clamp(0, 1), cfg)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                    surrogate.eval()
                for idx in batches(len(x), batch, gen):
                    idx = idx.to(device)
                    delta[idx], objective = self._noise_steps(x[idx], y[idx], delta[idx], surrogate, augment, cfg)
            bar.update(1)
            bar.set_postfix(objective=f"{objective:.4f}")
        bar.close()
        # (x + δ).clamp(0, 1) − x can end a float32 ulp below −ε (at level 24, for one), which the
        # export's truncation takes to a ninth level; the official noise is clamp(δ, −ε, ε) itself
        return delta.clamp(-self.eps, self.eps)

    def _noise_steps(self, x, y, d, surrogate, augment, cfg) -> tuple[torch.Tensor, float]:
        """``pgd_steps`` signed descent steps on one batch's δ; returns it and the last objective."""
        for _ in range(self.pgd_steps):
            d.requires_grad_(True)
            objective = self.csd_weight * class_separability(d, y)
            if surrogate is not None:
                objective = objective + self.w_ssl * contrastive_loss(surrogate, augment, (x + d).clamp(0, 1), cfg)
            (grad,) = torch.autograd.grad(objective, d)
            d = pgd_step(d.detach(), grad, self.step_size, self.eps, x, descend=True)
        return d, objective.item()
