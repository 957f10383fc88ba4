"""Tiny seeded data, trainer, fine-tuner and evaluators shared by the search-pruner tests."""
from __future__ import annotations

import torch
import torch.nn as nn

from nncore.compressor import Pruner


def tiny_batch(size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded batch for TinyCNN: inputs (size, 1, 6, 6), labels in 0..2."""
    generator = torch.Generator().manual_seed(3)
    return torch.randn(size, 1, 6, 6, generator=generator), torch.randint(0, 3, (size,), generator=generator)


X, Y = tiny_batch()


def accuracy(model: nn.Module) -> float:
    """Accuracy on the tiny batch."""
    with torch.no_grad():
        return float((model(X).argmax(1) == Y).float().mean())


def negative_loss(model: nn.Module) -> float:
    """Minus the cross-entropy on the tiny batch (a finely graded score to maximize)."""
    with torch.no_grad():
        return -float(nn.functional.cross_entropy(model(X), Y))


def fine_tune(model: nn.Module) -> None:
    """Two SGD steps on the tiny batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(X), Y).backward()
        optimizer.step()


def admm_trainer(model, optimizer, criterion, epoch, callback) -> None:
    """One epoch of two steps on the tiny batch, calling ``callback`` between backward and step."""
    for _ in range(2):
        optimizer.zero_grad()
        criterion(model(X), Y).backward()
        callback()
        optimizer.step()


def weight_masks(pruner: Pruner) -> dict[str, torch.Tensor]:
    """The weight masks of the configured layers (not the followers)."""
    return {name: wrapper.weight_mask for name, wrapper in pruner.wrappers.items()}


def pruned_and_total(pruner: Pruner) -> tuple[int, int]:
    """Masked weights and all weights of the configured layers."""
    masks = weight_masks(pruner).values()
    return sum(int((m == 0).sum()) for m in masks), sum(m.numel() for m in masks)


def assert_filter_structured(mask: torch.Tensor) -> None:
    """Every output channel of ``mask`` is kept whole or pruned whole."""
    rows = mask.flatten(1)
    assert bool((rows == rows[:, :1]).all())


def assert_masks_in_effect(pruner: Pruner) -> None:
    """Every masked weight of the model is zero."""
    for wrapper in pruner.all_wrappers().values():
        assert bool((wrapper.module.weight[wrapper.weight_mask == 0] == 0).all())
