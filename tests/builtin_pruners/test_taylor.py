"""TaylorFOWeightFilterPruner: sum of (w * dL/dw)^2 per filter, summed over the statistics steps."""
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


def test_the_contribution_sums_elementwise_squares_by_hand_with_mixed_signs():
    weight = torch.tensor(WEIGHTS).view(3, 2, 1)
    grad = torch.tensor([[1.0, 1.0], [1.0, 1.0], [2.0, 0.0]]).view(3, 2, 1)
    # w * g per filter: (1, 1), (2, -2), (1, 0) -> 1+1 = 2, 4+4 = 8, 1+0 = 1.
    # The mixed-sign filter is the most important; squaring the sum would give it 0 and prune it.
    assert taylor_contribution(weight, grad).tolist() == [2.0, 8.0, 1.0]


def test_mixed_signs_decide_which_filter_goes():
    model = three_filters()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    pruner = TaylorFOWeightFilterPruner(model, [{"sparsity": 0.34, "op_types": ["Conv1d"]}], optimizer)
    pruner.compress()
    step_with_gradient(model, optimizer, [[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])  # 2, 8, 0.25
    # squaring the sum would score the mixed-sign filter (2, -2) * (1, 1) as 0 and prune it instead
    assert channel_mask(model) == [1.0, 1.0, 0.0]


def test_importance_is_summed_over_the_statistics_steps_then_masks_are_set():
    model = three_filters()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    pruner = TaylorFOWeightFilterPruner(model, [{"sparsity": 0.34, "op_types": ["Conv1d"]}], optimizer, statistics_batch_num=2)
    pruner.compress()
    step_with_gradient(model, optimizer, [[1.0, 1.0], [1.0, 1.0], [2.0, 0.0]])  # 2, 8, 1
    assert channel_mask(model) == [1.0, 1.0, 1.0]
    step_with_gradient(model, optimizer, [[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # 0, 4, 0
    assert pruner.filter_importance(pruner.wrappers["0"]).tolist() == [2.0, 12.0, 1.0]
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
    # (w * x)^2 summed per filter: 1+9 = 10, 4+36 = 40, 0.25+2.25 = 2.5
    assert pruner.filter_importance(pruner.wrappers["0"]).tolist() == [10.0, 40.0, 2.5]
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
