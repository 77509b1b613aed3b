"""Held-out confidence: how well a model trained on the other images predicts each image's label.

The detection paper of Zhu et al. (AAAI 2024) trains a network on 4/5 of a possibly protected
set and calls the set protected when it predicts the held-out fifth better than a bound (0.7):
a shortcut generalises from the images it was learned on to the other protected images, clean
images do not teach a small network that much. Cross-fitting turns that one number into a
score per image: with ``folds`` parts, a model trained on the other parts gives each image the
probability of its own label. The mean of the correct predictions over all images is the
paper's statistic on the whole set.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn


def fold_of(n: int, folds: int, generator: torch.Generator) -> torch.Tensor:
    """Each image's fold (0 .. folds-1): a seeded permutation dealt round-robin."""
    if not 2 <= folds <= n:
        raise ValueError(f"folds must lie in 2..{n} (the number of images), got {folds}")
    fold = torch.empty(n, dtype=torch.long)
    fold[torch.randperm(n, generator=generator)] = torch.arange(n) % folds
    return fold


@torch.no_grad()
def probabilities(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """softmax(model(x)), (N, K), on the CPU (the model in eval mode)."""
    device = next(model.parameters()).device
    model.eval()
    return torch.cat([torch.softmax(model(part.to(device)).float(), 1).cpu() for part in x.split(batch_size)])


def heldout_confidence(x: torch.Tensor, y: torch.Tensor, folds: int, generator: torch.Generator,
                       fit: Callable[[torch.Tensor, torch.Tensor, int], nn.Module]) -> tuple[torch.Tensor, float]:
    """Per image, the probability of its label under a model ``fit(x_part, y_part, k)`` trained
    without its fold ``k``; and the held-out accuracy over all images (the paper's statistic)."""
    fold = fold_of(len(y), folds, generator)
    confidence = torch.empty(len(y))
    correct = 0
    for k in range(folds):
        held = fold == k
        probs = probabilities(fit(x[~held], y[~held], k), x[held])
        confidence[held] = probs.gather(1, y[held, None]).squeeze(1)
        correct += int((probs.argmax(1) == y[held]).sum())
    return confidence, correct / len(y)


def udp_recipe(epochs: int, lr: float, batch_size: int, augment: bool, amp: bool = True):
    """The training of the detection paper's networks (hala64/udp, ``poison_detection.py``): SGD,
    momentum 0.9 (not Nesterov), weight decay 5e-4, lr ÷10 at 75 % and 90 % of the epochs (75 and
    90 of 100), and random crop (pad 4, zeros) + flip only where ``augment``. The shared trainer
    exempts biases from weight decay, the official code does not."""
    from uebench.train import TrainConfig
    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, momentum=0.9, nesterov=False, weight_decay=5e-4,
                       schedule="multistep", milestones=(round(0.75 * epochs), round(0.9 * epochs)),
                       crop_pad=4 if augment else 0, flip=augment, crop_fill="zeros", amp=amp)
