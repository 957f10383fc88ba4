"""AGPPruner schedules every pruning_algorithm the seed lists (level, slim and the filter pruners)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nncore.builtin_pruners import AGPPruner
from nncore.errors import ConfigError

SEED_ALGORITHMS = ["level", "slim", "l1", "l2", "fpgm", "taylorfo", "apoz", "mean_activation"]
FILTER_ALGORITHMS = ["l1", "l2", "fpgm", "taylorfo", "apoz", "mean_activation"]


def conv_bn_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    )


def agp_config(algorithm: str) -> list[dict]:
    op_types = ["BatchNorm2d"] if algorithm == "slim" else ["Conv2d"]
    return [{"initial_sparsity": 0.0, "final_sparsity": 0.5, "start_epoch": 0, "end_epoch": 3, "op_types": op_types}]


def train(model: nn.Module, pruner: AGPPruner, optimizer: torch.optim.Optimizer, epochs: int) -> None:
    torch.manual_seed(1)
    for epoch in range(epochs):
        pruner.update_epoch(epoch)
        for _ in range(2):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(4, 1, 5, 5)), torch.tensor([0, 1, 2, 0])).backward()
            optimizer.step()
            pruner.step()


def pruned_filters(wrapper) -> int:
    return int(wrapper.weight_mask.flatten(1).amax(1).eq(0).sum())


def agp_pruned(algorithm: str, epochs: int = 3) -> tuple[nn.Sequential, AGPPruner]:
    model = conv_bn_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pruner = AGPPruner(model, agp_config(algorithm), optimizer, pruning_algorithm=algorithm)
    pruner.compress()
    train(model, pruner, optimizer, epochs)
    return model, pruner


@pytest.mark.parametrize("algorithm", FILTER_ALGORITHMS)
def test_filter_algorithms_reach_the_final_sparsity_in_whole_filters(algorithm):
    model, pruner = agp_pruned(algorithm)
    # final 0.5: int(0.5 * 4) = 2 and int(0.5 * 6) = 3 filters, whole filters with their bias
    assert pruned_filters(pruner.wrappers["0"]) == 2 and pruned_filters(pruner.wrappers["3"]) == 3
    for wrapper in pruner.wrappers.values():
        channel = wrapper.weight_mask.flatten(1).amax(1)
        assert torch.equal(wrapper.weight_mask, channel.view(-1, 1, 1, 1).expand_as(wrapper.weight_mask))
        assert torch.equal(wrapper.bias_mask, channel)


@pytest.mark.parametrize("algorithm", ["l1", "apoz"])
def test_the_schedule_raises_sparsity_epoch_by_epoch(algorithm):
    model, pruner = agp_pruned(algorithm, epochs=2)
    # epoch 1: 0.5 + (0 - 0.5) * (1 - 1/2) ** 3 = 0.4375 -> int(1.75) = 1, int(2.625) = 2 (rounded down, as NNI)
    assert pruned_filters(pruner.wrappers["0"]) == 1 and pruned_filters(pruner.wrappers["3"]) == 2
    model, pruner = agp_pruned(algorithm, epochs=1)
    # epoch 0: sparsity 0 (and the statistics of apoz are not in yet)
    assert pruned_filters(pruner.wrappers["0"]) == 0 and pruned_filters(pruner.wrappers["3"]) == 0


def test_level_and_slim_under_agp():
    _, level = agp_pruned("level")
    assert all(w.weight_mask.eq(0).sum().item() == int(0.5 * w.weight_mask.numel()) for w in level.wrappers.values())
    _, slim = agp_pruned("slim")
    assert sum(int(w.weight_mask.eq(0).sum()) for w in slim.wrappers.values()) == 5  # int(0.5 * 10), global


def test_every_seed_algorithm_is_accepted():
    model = conv_bn_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for algorithm in SEED_ALGORITHMS:
        pruner = AGPPruner(model, agp_config(algorithm), optimizer, pruning_algorithm=algorithm)
        assert pruner.algorithm.name == algorithm


def test_taylorfo_under_agp_needs_the_optimizer():
    with pytest.raises(ConfigError, match="needs the training optimizer"):
        AGPPruner(conv_bn_net(), agp_config("taylorfo"), pruning_algorithm="taylorfo")


def test_algorithm_options_reach_the_filter_pruner():
    model = conv_bn_net()
    pruner = AGPPruner(model, agp_config("apoz"), pruning_algorithm="apoz",
                       algorithm_options={"statistics_batch_num": 3, "activation": "relu6"})
    assert pruner.algorithm.statistics_batch_num == 3 and pruner.algorithm.activation == "relu6"


def test_batchnorm_channels_stay_zero_under_agp_and_are_exported():
    model, pruner = agp_pruned("l1")
    assert {"1", "4"} <= set(pruner.masks())
    model.eval()
    out = model[:2](torch.randn(2, 1, 5, 5))
    dead = pruner.wrappers["0"].weight_mask.flatten(1).amax(1).eq(0)
    assert out[:, dead].eq(0).all()
