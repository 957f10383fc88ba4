"""Dependency-aware filter pruning: coupled convolutions share one channel mask.

The convolutions feeding a residual add are ranked by their summed importance; the pruned
count of a convolution feeding a grouped one is split evenly over the groups.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nncore.builtin_pruners import FPGMPruner, L1FilterPruner, L2FilterPruner
from nncore.errors import ConfigError
from nncore.registry import get_compressor
from nncore.speedup import ModelSpeedup
from tests.conftest import assert_untouched, snapshot

# L1 norms of the filters of the two branches: alone, branch1 would lose channels {0, 1} and
# branch2 {2, 3}; summed [10, 6, 7, 10] -> both lose {1, 2}.
BRANCH1_NORMS = [1.0, 2.0, 5.0, 9.0]
BRANCH2_NORMS = [9.0, 4.0, 2.0, 1.0]


def set_filter_norms(conv: nn.Conv2d, norms: list[float]) -> None:
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, 0, 0, 0] = torch.tensor(norms)


class ResidualNet(nn.Module):
    """stem -> (branch1 -> bn1) + (branch2 -> bn2) -> relu -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 1)
        self.branch1, self.bn1 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.branch2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        return self.bn1(self.branch1(x)) + self.bn2(self.branch2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.residual(x))).mean((2, 3))


def residual_net() -> ResidualNet:
    torch.manual_seed(0)
    net = ResidualNet()
    set_filter_norms(net.branch1, BRANCH1_NORMS)
    set_filter_norms(net.branch2, BRANCH2_NORMS)
    with torch.no_grad():
        for bn in (net.bn1, net.bn2):
            bn.bias.uniform_(0.5, 1.0)
    return net


def channels(pruner, name: str) -> list[float]:
    return pruner.wrappers[name].weight_mask.flatten(1).amax(1).tolist()


BRANCHES = {"sparsity": 0.5, "op_names": ["branch1", "branch2"]}


def test_the_convs_feeding_one_add_share_the_mask_of_their_summed_importance():
    net = residual_net()
    pruner = L1FilterPruner(net, [BRANCHES], dependency_aware=True, dummy_input=torch.randn(1, 1, 3, 3))
    pruner.compress()
    assert channels(pruner, "branch1") == [1.0, 0.0, 0.0, 1.0]
    assert channels(pruner, "branch2") == [1.0, 0.0, 0.0, 1.0]
    # The masks complete through both BatchNorms: the added channels are exactly zero.
    net.eval()
    assert net.residual(torch.randn(2, 1, 3, 3))[:, [1, 2]].eq(0).all()


def test_without_dependency_awareness_each_conv_ranks_alone():
    pruner = L1FilterPruner(residual_net(), [BRANCHES])
    pruner.compress()
    assert channels(pruner, "branch1") == [0.0, 0.0, 1.0, 1.0]
    assert channels(pruner, "branch2") == [1.0, 1.0, 0.0, 0.0]


def test_the_shared_mask_uses_the_smallest_sparsity_of_the_set():
    net = residual_net()
    config = [{"sparsity": 0.5, "op_names": ["branch1"]}, {"sparsity": 0.25, "op_names": ["branch2"]}]
    pruner = L1FilterPruner(net, config, dependency_aware=True, dummy_input=torch.randn(1, 1, 3, 3))
    pruner.compress()
    assert channels(pruner, "branch1") == channels(pruner, "branch2") == [1.0, 0.0, 1.0, 1.0]


def test_speedup_really_removes_the_shared_channels():
    net = residual_net()
    dummy = torch.randn(2, 1, 3, 3)
    pruner = L1FilterPruner(net, [BRANCHES], dependency_aware=True, dummy_input=dummy)
    pruner.compress()
    masks = pruner.masks()
    pruner.unwrap_model()
    net.eval()
    expected = net(dummy)
    ModelSpeedup(net, dummy, masks).speedup_model()
    assert net.branch1.out_channels == net.branch2.out_channels == 2
    assert net.bn1.num_features == 2 and net.head.in_channels == 2
    assert torch.allclose(net(dummy), expected, atol=1e-5)


class GroupedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1)
        self.grouped = nn.Conv2d(4, 4, 1, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.grouped(torch.relu(self.conv(x)))


def test_a_conv_feeding_a_grouped_conv_loses_the_same_count_in_every_group():
    net = GroupedNet()
    with torch.no_grad():
        net.conv.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1))
    pruner = L2FilterPruner(net, [{"sparsity": 0.5, "op_names": ["conv"]}], dependency_aware=True,
                            dummy_input=torch.randn(1, 1, 2, 2))
    pruner.compress()
    # Alone the ranking would prune channels 0 and 1 (both of group 0); per group: 0 and 2.
    assert channels(pruner, "conv") == [0.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize("pruner_class", [L1FilterPruner, L2FilterPruner, FPGMPruner])
def test_dependency_aware_without_dummy_input_is_refused_and_the_model_is_untouched(pruner_class):
    net = residual_net()
    before = snapshot(net)
    with pytest.raises(ConfigError, match="dependency_aware=True needs dummy_input"):
        pruner_class(net, [BRANCHES], dependency_aware=True)
    assert_untouched(net, before)


def test_a_dummy_input_the_model_cannot_run_is_refused():
    net = residual_net()
    before = snapshot(net)
    with pytest.raises(ConfigError, match="dummy_input does not run through the model"):
        L1FilterPruner(net, [BRANCHES], dependency_aware=True, dummy_input=torch.randn(1, 3, 3, 3))
    assert_untouched(net, before)


@pytest.mark.parametrize("pruner_name", ["apoz", "mean_activation", "taylorfo"])
def test_statistics_pruners_share_the_mask_of_the_set_too(pruner_name):
    net = residual_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    extra = {"optimizer": optimizer} if pruner_name == "taylorfo" else {}
    pruner = get_compressor(pruner_name)(
        net, [BRANCHES], dependency_aware=True, dummy_input=torch.randn(1, 1, 3, 3), **extra
    )
    pruner.compress()
    net(torch.randn(4, 1, 3, 3)).sum().backward()
    optimizer.step()
    importance = pruner.filter_importance(pruner.wrappers["branch1"]) + pruner.filter_importance(pruner.wrappers["branch2"])
    expected = [0.0 if c in importance.argsort(stable=True)[:2].tolist() else 1.0 for c in range(4)]
    assert channels(pruner, "branch1") == channels(pruner, "branch2") == expected
