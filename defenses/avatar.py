"""AVATAR: unguided diffusion purification of the training set (DiffPure-style)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from uebench.toolkit.sampling import DIFFUSION_PRESETS, DiffusionModel, DiffusionPurification


@dataclass
class AVATAR(DiffusionPurification):
    """Dolatabadi et al., "The Devil's Advocate: Shattering the Illusion of Unexploitable
    Data using Diffusion Models", 2023 (arXiv 2303.08500).

    Every training image is diffused to step ``t_star`` with q(x_t | x_0) and denoised back
    to 0 with the reverse chain of a DDPM of clean data (DiffPure, Nie et al. 2022, with
    no guidance), once; the victim then trains normally on the purified set. The larger
    ``t_star``, the more of the perturbation (and of the image) is destroyed.

    Defaults: t* = 100 of T = 1000 (the released configuration; APBench used 60), one
    pass, the DDPM CIFAR-10 network (``ddpm-cifar``), batch 500.

    Deviations:
    - The paper uses the score-SDE (VP) model and solver of DiffPure; we use the discrete
      DDPM chain (the same VP process) with the diffusion model LE uses, so the two
      defenses differ only in the purification, and that model is trained from scratch
      on the reference split rather than on the full clean CIFAR-10 training set.
    - ``stride > 1`` reverses over every stride-th step (CPU presets).
    """

    name = "avatar"
    paper = ("Dolatabadi et al., The Devil's Advocate: Shattering the Illusion of Unexploitable Data "
             "using Diffusion Models")
    year = 2023
    presets = {
        "smoke": {**DIFFUSION_PRESETS["smoke"], "stride": 50},
        "demo": {**DIFFUSION_PRESETS["demo"], "stride": 20},
        "cpu": {**DIFFUSION_PRESETS["cpu"], "stride": 20},
        "paper": {**DIFFUSION_PRESETS["paper"]},
    }

    t_star: int = 100
    passes: int = 1

    def setup(self, model, reference, ctx):
        ctx.notes["schedule"] = {"t_star": self.t_star, "stride": self.stride, "passes": self.passes,
                                 "timesteps": model.timesteps(self.t_star, self.stride)}

    def purify_batch(self, model: DiffusionModel, x, generator, state):
        timesteps = model.timesteps(self.t_star, self.stride)
        for _ in range(self.passes):
            noise = torch.randn(x.shape, generator=generator).to(x.device)
            x = model.reverse(model.q_sample(x, timesteps[0], noise), timesteps, generator)
        return x
