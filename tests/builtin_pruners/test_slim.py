"""SlimPruner: one global |gamma| ranking across BatchNorm2d layers; sparsity-training helpers."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nncore.builtin_pruners import SlimPruner
from nncore.builtin_pruners.slim import add_slim_subgradient, slim_regularization
from nncore.errors import ConfigError
from nncore.registry import get_compressor
from tests.conftest import assert_untouched, snapshot


def two_bn_model(gamma1: list[float], gamma2: list[float]) -> nn.Sequential:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU()
    )
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(gamma1))
        model[4].weight.copy_(torch.tensor(gamma2))
        model[1].bias.fill_(0.7)
        model[4].bias.fill_(-0.3)
    return model


@pytest.mark.parametrize(
    "gamma1, gamma2, mask1, mask2",
    [
        # |gamma| sorted: 0.01 (bn2), 0.05 (bn1), 0.1 (bn1), 0.2 (bn2) | 0.3, 0.5, 0.8, 0.9
        ([0.1, -0.9, 0.5, 0.05], [0.3, -0.2, 0.8, 0.01], [0, 1, 1, 0], [1, 0, 1, 0]),
        # 0.05 (bn2), 0.1, 0.2, 0.3 (bn1): the global ranking takes 3 channels of bn1, 1 of bn2
        ([0.1, 0.2, -0.3, 0.9], [0.05, 0.8, 0.7, 0.6], [0, 0, 0, 1], [0, 1, 1, 1]),
    ],
)
def test_the_smallest_gammas_of_all_layers_are_pruned_together(gamma1, gamma2, mask1, mask2):
    model = two_bn_model(gamma1, gamma2)
    pruner = SlimPruner(model, [{"sparsity": 0.5, "op_types": ["BatchNorm2d"]}])
    pruner.compress()
    masks = pruner.masks()
    assert masks["1"]["weight"].tolist() == mask1 and masks["1"]["bias"].tolist() == mask1
    assert masks["4"]["weight"].tolist() == mask2 and masks["4"]["bias"].tolist() == mask2
    model.eval()
    out = model[:5](torch.randn(2, 1, 3, 3))
    dead = [c for c, keep in enumerate(mask2) if not keep]
    assert out[:, dead].eq(0).all()


def test_a_layer_keeps_its_largest_channel_when_the_ranking_would_empty_it():
    model = two_bn_model([0.01, 0.02, 0.03, 0.04], [0.5, 0.6, 0.7, 0.8])
    pruner = SlimPruner(model, [{"sparsity": 0.5, "op_types": ["BatchNorm2d"]}])
    pruner.compress()
    assert pruner.masks()["1"]["weight"].tolist() == [0, 0, 0, 1]
    assert pruner.masks()["4"]["weight"].tolist() == [1, 1, 1, 1]


def test_seed_usage_and_registry_name():
    assert get_compressor("slim") is SlimPruner
    model = two_bn_model([0.1] * 4, [0.2] * 4)
    pruner = SlimPruner(model, [{"sparsity": 0.25, "op_types": ["default"]}])
    pruner.compress()
    assert sorted(pruner.wrappers) == ["1", "4"]
    assert sum(m["weight"].eq(0).sum().item() for m in pruner.masks().values()) == 2


def test_slim_on_a_convolution_is_refused_and_the_model_is_untouched():
    model = two_bn_model([0.1] * 4, [0.2] * 4)
    before = snapshot(model)
    with pytest.raises(ConfigError, match=r"cannot compress '0' \(Conv2d\): SlimPruner supports only BatchNorm2d"):
        SlimPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d", "BatchNorm2d"]}])
    assert_untouched(model, before)


def test_different_sparsities_are_refused_because_the_ranking_is_global():
    model = two_bn_model([0.1] * 4, [0.2] * 4)
    with pytest.raises(ConfigError, match=r"config_list\[1\].sparsity: 0.3 differs from config_list\[0\].sparsity 0.5"):
        SlimPruner(model, [{"sparsity": 0.5, "op_names": ["1"]}, {"sparsity": 0.3, "op_names": ["4"]}])


def test_slim_regularization_is_the_l1_norm_of_every_gamma():
    model = two_bn_model([0.1, -0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 0.0])
    term = slim_regularization(model, penalty=0.01)
    assert term.item() == pytest.approx(0.01 * (1.0 + 2.5))
    term.backward()
    assert model[1].weight.grad.tolist() == pytest.approx([0.01, -0.01, 0.01, 0.01])


def test_add_slim_subgradient_adds_penalty_times_sign():
    model = two_bn_model([0.1, -0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 0.0])
    model(torch.randn(2, 1, 2, 2)).sum().backward()
    grad_before = model[4].weight.grad.clone()
    add_slim_subgradient(model, penalty=0.5)
    assert torch.allclose(model[4].weight.grad, grad_before + torch.tensor([0.5, -0.5, 0.5, 0.0]))


def test_a_negative_penalty_is_refused():
    with pytest.raises(ConfigError, match="penalty must be a number >= 0, got -1"):
        slim_regularization(two_bn_model([0.1] * 4, [0.1] * 4), penalty=-1)
