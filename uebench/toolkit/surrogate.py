"""A classifier trained on the clean protected set, shared by the attacks that need one.

TAP crafts adversarial examples against a network trained on the very images it protects;
other attacks may reuse the same network. It is trained once with the shared recipe and
its weights are cached (``ctx.cached``), keyed on the architecture, the epochs, the
training recipe and a fingerprint of the images, so every attack and seed that asks for
the same surrogate gets the same weights without training again.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn

from uebench import train as train_module
from uebench.api import Defense, hparams
from uebench.storage import code_fingerprint, tensor_fingerprint
from uebench.train import accuracy, train_supervised


def trained_surrogate(x: torch.Tensor, y: torch.Tensor, ctx, arch: str | None = None,
                      epochs: int = 40, augment: Defense | None = None, **recipe: Any) -> nn.Module:
    """A classifier (``arch``, default the victim's ``ctx.model``) trained for ``epochs`` on
    the clean ``x, y`` with the table's supervised recipe; frozen, in eval mode, on
    ``ctx.device``.

    ``augment`` (a defense-shaped training hook, e.g. :class:`uebench.toolkit.augment.AugmentedTraining`)
    runs on every batch, and ``recipe`` overrides fields of the table's ``TrainConfig`` (lr,
    weight_decay, crop_pad, ...): for an attack whose reference model is trained otherwise (AAP).
    Both are part of the cache key.

    Always supervised, whatever the table's protocol: the attacks that use it need class
    logits. ``ctx.notes["surrogate"]`` records the architecture, the epochs and its
    accuracy on ``x`` (the clean protected set; the test set is never seen).
    """
    arch = arch or ctx.model
    cfg = replace(ctx.train, epochs=epochs, **recipe)
    key = {"what": "supervised-surrogate", "arch": arch, "epochs": epochs, "train": cfg.as_dict(),
           "num_classes": ctx.num_classes, "data": tensor_fingerprint(x, y),
           "trainer": code_fingerprint(train_module)}   # this module's own code is added by ctx.cached
    if augment is not None:       # absent otherwise, so the plain surrogate's key stays what it was
        key["augment"] = {"class": type(augment).__name__, **hparams(augment), "code": code_fingerprint(type(augment))}

    def build() -> dict[str, torch.Tensor]:
        torch.manual_seed(ctx.seed)   # the initial weights, so a rebuild equals the cached copy
        model = train_supervised(ctx.make_model(arch), x, y, cfg, ctx.device, ctx.seed, defense=augment,
                                 progress=lambda **kw: ctx.pbar(**{**kw, "desc": "surrogate"}))
        return {name: value.detach().cpu() for name, value in model.state_dict().items()}

    model = ctx.make_model(arch)
    model.load_state_dict(ctx.cached(key, build, name="surrogate"))
    model = model.to(ctx.device).eval().requires_grad_(False)
    ctx.notes["surrogate"] = {"arch": arch, "epochs": epochs,
                              "clean_train_acc": round(accuracy(model, x, y.cpu()), 4)}
    return model
