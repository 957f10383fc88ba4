"""LevelPruner masks exactly int(sparsity * n) smallest |w| of each layer (rounded down, as NNI)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nncore.builtin_pruners import LevelPruner
from nncore.builtin_pruners.level import smallest_magnitude_mask


def linear_with(weight: list[list[float]]) -> nn.Sequential:
    layer = nn.Linear(len(weight[0]), len(weight), bias=True)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
    return nn.Sequential(layer)


def test_the_smallest_magnitudes_are_masked_by_hand():
    model = linear_with([[0.5, -0.1, 3.0], [-2.0, 0.05, -0.7]])
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}])
    pruner.compress()
    # |w| sorted: 0.05, 0.1, 0.5 | 0.7, 2.0, 3.0 -> the three smallest go
    expected = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    assert torch.equal(pruner.wrappers["0"].weight_mask, expected)
    assert torch.equal(model[0].module.weight, torch.tensor([[0.0, 0.0, 3.0], [-2.0, 0.0, -0.7]]))
    assert pruner.wrappers["0"].bias_mask.eq(1).all()


@pytest.mark.parametrize("sparsity, n, expected", [(0.8, 10, 8), (0.25, 6, 1), (0.5, 5, 2), (0.5, 7, 3), (0.9, 9, 8), (0.0, 7, 0), (1.0, 4, 4)])
def test_the_count_is_sparsity_times_n_rounded_down(sparsity, n, expected):
    weight = torch.randn(n)
    assert (smallest_magnitude_mask(weight, sparsity) == 0).sum().item() == expected == int(sparsity * n)


def test_ties_still_give_the_exact_count():
    weight = torch.ones(3, 4)
    assert (smallest_magnitude_mask(weight, 0.5) == 0).sum().item() == 6


def test_each_layer_gets_its_own_configured_sparsity(tiny_cnn):
    pruner = LevelPruner(tiny_cnn, [{"sparsity": 0.8, "op_types": ["default"]}, {"sparsity": 0.3, "op_names": ["fc"]}])
    pruner.compress()
    for name, sparsity in (("conv1", 0.8), ("conv2", 0.8), ("fc", 0.3)):
        mask = pruner.wrappers[name].weight_mask
        assert (mask == 0).sum().item() == int(sparsity * mask.numel())
