"""TaylorFOWeightFilterPruner: (sum of w * dL/dw)^2 per filter, summed over the statistics steps."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nncore.builtin_pruners import TaylorFOWeightFilterPruner
from nncore.builtin_pruners.taylor import taylor_contribution
from nncore.errors import ConfigError
from nncore.registry import get_compressor
from tests.conftest import assert_untouched, make_tiny_cnn, snapshot

# Three filters of two weights each.
WEIGHTS = [[1.0, 1.0], [2.0, -2.0], [0.5, 0.5]]


def three_filters() -> nn.Sequential:
    conv = nn.Conv1d(2, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(WEIGHTS).view(3, 2, 1))
    return nn.Sequential(conv)


def step_with_gradient(model: nn.Sequential, optimizer: torch.optim.Optimizer, grad: list[list[float]]) -> None:
    model[0].module.weight.grad = torch.tensor(grad).view(3, 2, 1)
    optimizer.step()


def channel_mask(model: nn.Sequential) -> list[float]:
    return model[0].weight_mask.flatten(1).amax(1).tolist()


def test_the_contribution_squares_the_filter_sum_by_hand():
    weight = torch.tensor(WEIGHTS).view(3, 2, 1)
    grad = torch.tensor([[1.0, 1.0], [1.0, 1.0], [2.0, 0.0]]).view(3, 2, 1)
    # (1+1)^2 = 4, (2-2)^2 = 0 (elementwise squares would give 8), (1+0)^2 = 1
    assert taylor_contribution(weight, grad).tolist() == [4.0, 0.0, 1.0]


def test_importance_is_summed_over_the_statistics_steps_then_masks_are_set():
    model = three_filters()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    pruner = TaylorFOWeightFilterPruner(model, [{"sparsity": 0.34, "op_types": ["Conv1d"]}], optimizer, statistics_batch_num=2)
    pruner.compress()
    step_with_gradient(model, optimizer, [[1.0, 1.0], [1.0, 1.0], [2.0, 0.0]])  # 4, 0, 1
    assert channel_mask(model) == [1.0, 1.0, 1.0]
    step_with_gradient(model, optimizer, [[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # 0, 4, 0
    assert pruner.filter_importance(pruner.wrappers["0"]).tolist() == [4.0, 4.0, 1.0]
    assert channel_mask(model) == [1.0, 1.0, 0.0]
    # Later steps no longer change the ranking.
    step_with_gradient(model, optimizer, [[0.0, 0.0], [0.0, 0.0], [9.0, 9.0]])
    assert channel_mask(model) == [1.0, 1.0, 0.0]


def test_one_statistics_step_of_real_training():
    model = three_filters()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = TaylorFOWeightFilterPruner(model, [{"sparsity": 0.34, "op_types": ["Conv1d"]}], optimizer)
    pruner.compress()
    x = torch.tensor([[[1.0], [3.0]]])
    model(x).sum().backward()  # dL/dw of every filter is the input (1, 3)
    optimizer.step()
    # filter sums of w * x: 1+3 = 4, 2-6 = -4, 0.5+1.5 = 2 -> squares 16, 16, 4
    assert pruner.filter_importance(pruner.wrappers["0"]).tolist() == [16.0, 16.0, 4.0]
    assert channel_mask(model) == [1.0, 1.0, 0.0]
    assert model[0].module.weight[2].eq(0).all()


def test_seed_usage_and_registry_name():
    assert get_compressor("taylorfo") is TaylorFOWeightFilterPruner
    model = make_tiny_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    pruner = TaylorFOWeightFilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], optimizer)
    pruner.compress()
    model(torch.randn(2, 1, 6, 6)).sum().backward()
    optimizer.step()
    assert model.conv1.weight_mask.flatten(1).amax(1).sum().item() == 2
    assert model.conv2.weight_mask.flatten(1).amax(1).sum().item() == 4
    assert pruner.masks()["bn1"]["weight"].tolist() == model.conv1.weight_mask.flatten(1).amax(1).tolist()


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((None,), {}, "needs the training optimizer .* got NoneType"),
        (("sgd",), {}, "needs the training optimizer .* got str"),
        ((), {"statistics_batch_num": 0}, "statistics_batch_num must be an int >= 1, got 0"),
        ((), {"dependency_aware": True}, "dependency_aware=True needs dummy_input"),
    ],
)
def test_bad_arguments_are_refused_and_the_model_is_untouched(args, kwargs, message):
    model = make_tiny_cnn()
    before = snapshot(model)
    if not args:
        args = (torch.optim.SGD(model.parameters(), lr=0.1),)
    with pytest.raises(ConfigError, match=message):
        TaylorFOWeightFilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], *args, **kwargs)
    assert_untouched(model, before)
