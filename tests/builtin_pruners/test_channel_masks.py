"""Filter masks are channel-complete: conv weight + bias and the following BatchNorm's weight + bias.

A pruned channel must output exactly zero after BatchNorm (NNI issue #2130: BN's shift
survived, so speedup changed the output), in train and eval mode and through training.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nncore.builtin_pruners import FPGMPruner, L1FilterPruner, L2FilterPruner
from nncore.builtin_pruners.filter_base import find_following_batchnorms
from nncore.errors import ConfigError
from tests.conftest import assert_untouched, snapshot


class ConvBNNet(nn.Module):
    """conv1 -> bn1 -> relu -> conv2 -> bn2 -> relu -> pool -> fc (Conv1d when ``dims=1``)."""

    def __init__(self, dims: int = 2, branch_on_data: bool = False) -> None:
        super().__init__()
        conv, bn = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv1d, nn.BatchNorm1d)
        self.conv1, self.bn1 = conv(2, 4, 3, padding=1), bn(4)
        self.conv2, self.bn2 = conv(4, 6, 3, padding=1), bn(6)
        self.fc = nn.Linear(6, 3)
        self.branch_on_data = branch_on_data

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch_on_data and x.sum() > 1e9:  # data-dependent: torch.fx cannot trace this
            x = x / 2
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.flatten(2).mean(2))


def make_net(dims: int = 2, branch_on_data: bool = False) -> ConvBNNet:
    torch.manual_seed(0)
    net = ConvBNNet(dims, branch_on_data)
    with torch.no_grad():  # BN shifts and scales far from the defaults, so zero is not an accident
        for bn in (net.bn1, net.bn2):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(0.5, 2.0)
    return net


def inputs(dims: int = 2) -> torch.Tensor:
    return torch.randn(4, 2, *((5, 5) if dims == 2 else (7,)))


def pruned_channels(wrapper) -> list[int]:
    return wrapper.weight_mask.flatten(1).amax(1).eq(0).nonzero().flatten().tolist()


def assert_bn_follows_its_conv(pruner, conv: str, bn: str) -> None:
    masks = pruner.masks()
    channel = masks[conv]["weight"].flatten(1).amax(1)
    assert masks[conv]["bias"].tolist() == channel.tolist()
    assert masks[bn]["weight"].tolist() == channel.tolist()
    assert masks[bn]["bias"].tolist() == channel.tolist()


def bn_outputs(net: ConvBNNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    first = net.bn1(net.conv1(x))
    return first, net.bn2(net.conv2(torch.relu(first)))


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("pruner_class", [L1FilterPruner, L2FilterPruner, FPGMPruner])
def test_the_batchnorm_after_each_conv_gets_the_conv_channel_mask(pruner_class, dims):
    net = make_net(dims)
    pruner = pruner_class(net, [{"sparsity": 0.5, "op_types": ["Conv1d", "Conv2d"]}])
    pruner.compress()
    assert set(pruner.followers) == {"bn1", "bn2"}
    assert_bn_follows_its_conv(pruner, "conv1", "bn1")
    assert_bn_follows_its_conv(pruner, "conv2", "bn2")
    assert len(pruned_channels(pruner.wrappers["conv1"])) == 2
    assert len(pruned_channels(pruner.wrappers["conv2"])) == 3


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_pruned_channels_output_exactly_zero_after_batchnorm_through_training(mode):
    net = make_net()
    pruner = L1FilterPruner(net, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        optimizer.zero_grad()
        net(inputs()).sum().backward()
        optimizer.step()
    net.train(mode == "train")
    first, second = bn_outputs(net, inputs())
    dead1, dead2 = pruned_channels(pruner.wrappers["conv1"]), pruned_channels(pruner.wrappers["conv2"])
    assert first[:, dead1].eq(0).all() and second[:, dead2].eq(0).all()
    live1 = [c for c in range(4) if c not in dead1]
    assert first[:, live1].ne(0).any()


def test_export_contains_the_batchnorm_masks(tmp_path):
    net = make_net()
    pruner = L1FilterPruner(net, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    pruner.export_model(str(tmp_path / "model.pth"), mask_path=str(tmp_path / "mask.pth"))
    masks = torch.load(tmp_path / "mask.pth", weights_only=True)
    assert set(masks) == {"conv1", "conv2", "bn1", "bn2"}
    state = torch.load(tmp_path / "model.pth", weights_only=True)
    dead = pruned_channels(pruner.wrappers["conv1"])
    assert masks["bn1"]["weight"][dead].eq(0).all()
    assert state["bn1.weight"][dead].eq(0).all() and state["bn1.bias"][dead].eq(0).all()
    assert set(state) == set(make_net().state_dict())


def test_a_model_fx_cannot_trace_finds_its_batchnorms_on_the_first_batch():
    net = make_net(branch_on_data=True)
    pruner = L1FilterPruner(net, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    assert pruner.followers == {}
    x = inputs()
    output = net(x)
    assert set(pruner.followers) == {"bn1", "bn2"}
    assert_bn_follows_its_conv(pruner, "conv2", "bn2")
    # That first batch already ran with the BatchNorm channels masked.
    first, _ = bn_outputs(net, x)
    assert first[:, pruned_channels(pruner.wrappers["conv1"])].eq(0).all()
    assert torch.equal(output, net(x))


def test_dummy_input_traces_without_running_statistics_changing():
    net = make_net(branch_on_data=True)
    running_mean = net.bn1.running_mean.clone()
    pruner = L1FilterPruner(net, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], dummy_input=inputs())
    pruner.compress()
    assert set(pruner.followers) == {"bn1", "bn2"}
    assert torch.equal(net.bn1.module.running_mean, running_mean)
    assert net.training


def test_only_a_batchnorm_that_directly_consumes_the_conv_output_follows():
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    assert pruner.followers.keys() == {"4"}
    assert pruner.followers["4"].config["leader"] == "3"
    assert find_following_batchnorms(model, ["0", "3"], (torch.randn(1, 1, 2, 2),)) == {"3": "4"}


def test_unwrap_restores_the_batchnorms():
    net = make_net()
    bn1 = net.bn1
    pruner = L1FilterPruner(net, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    pruner.unwrap_model()
    assert net.bn1 is bn1 and isinstance(net.conv1, nn.Conv2d)


def test_a_dummy_input_the_model_cannot_run_is_refused_before_anything_is_touched():
    net = make_net()
    before = snapshot(net)
    with pytest.raises(ConfigError, match="L2FilterPruner: dummy_input does not run through the model"):
        L2FilterPruner(net, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], dummy_input=torch.randn(1, 3, 5, 5))
    assert_untouched(net, before)
