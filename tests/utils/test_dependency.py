"""ChannelDependency / GroupDependency as NNI 1.9 defines them, their CSV export, and the
speedup-grade coupling (``depthwise=True``) that dependency-aware pruners use."""
from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

from nncore.errors import ConfigError
from nncore.utils import ChannelDependency, GroupDependency
from nncore.zoo import resnet18


def find_set(sets, name):
    return next(group for group in sets if name in group)


def test_resnet_stage_couples_stem_and_every_block_output():
    model = resnet18(num_classes=10).eval()
    sets = ChannelDependency(model, torch.randn(1, 3, 32, 32)).dependency_sets
    assert find_set(sets, "conv1") == {"conv1", "layer1.0.conv2", "layer1.1.conv2"}
    assert find_set(sets, "layer2.0.conv2") == {"layer2.0.downsample.0", "layer2.0.conv2", "layer2.1.conv2"}
    assert find_set(sets, "layer1.0.conv1") == {"layer1.0.conv1"}
    assert find_set(sets, "fc") == {"fc"}
    assert sum(len(group) for group in sets) == sum(
        isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


class GroupedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c(self.dw(torch.relu(self.b(self.a(x)))))


def test_group_dependency_as_nni_counts_depthwise_groups():
    groups = GroupDependency(GroupedNet(), torch.randn(1, 3, 6, 6))
    # b has 4 groups and feeds the depthwise conv (8 groups): lcm 8; a feeds b: 4
    assert groups.dependency == {"a": 4, "b": 8, "dw": 8, "c": 1}
    assert groups.dependency_sets is groups.dependency


def test_depthwise_couplings_only_with_the_explicit_option():
    model, dummy = GroupedNet(), torch.randn(1, 3, 6, 6)
    assert sorted(map(sorted, ChannelDependency(model, dummy).dependency_sets)) == [["a"], ["b"], ["c"], ["dw"]]
    coupled = ChannelDependency(model, dummy, depthwise=True).dependency_sets
    assert find_set(coupled, "b") == {"b", "dw"}


class DepthwiseIntoAdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)

    def forward(self, x):
        return self.dw(torch.relu(self.a(x))) + self.b(x)


def test_the_add_couples_its_nearest_layers_only():
    model, dummy = DepthwiseIntoAdd(), torch.randn(1, 3, 5, 5)
    assert sorted(map(sorted, ChannelDependency(model, dummy).dependency_sets)) == [["a"], ["b", "dw"]]
    assert find_set(ChannelDependency(model, dummy, depthwise=True).dependency_sets, "a") == {"a", "b", "dw"}


class Cat(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], self.dim)
        return self.c(y if self.dim == 0 else y[:, :4])


def test_concatenation_couples_only_off_the_channel_dimension():
    dummy = torch.randn(1, 3, 4, 4)
    assert sorted(map(sorted, ChannelDependency(Cat(1), dummy).dependency_sets)) == [["a"], ["b"], ["c"]]
    assert find_set(ChannelDependency(Cat(0), dummy).dependency_sets, "a") == {"a", "b"}


def test_exports_write_nni_csv_layouts(tmp_path):
    model, dummy = DepthwiseIntoAdd(), torch.randn(1, 3, 5, 5)
    channel_path, group_path = tmp_path / "channel.csv", tmp_path / "group.csv"
    ChannelDependency(model, dummy).export(channel_path)
    GroupDependency(model, dummy).export(group_path)
    with open(channel_path, newline="") as handle:
        assert list(csv.reader(handle)) == [["Dependency Set", "Layers"], ["Set 1", "a"], ["Set 2", "b", "dw"]]
    with open(group_path, newline="") as handle:
        assert list(csv.reader(handle)) == [["Conv Layer Name", "Group"], ["a", "4"], ["b", "1"], ["dw", "4"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["channel.csv", "group.csv"]  # no temporary left


def test_a_model_without_grad_or_in_eval_mode_is_analysed_and_left_as_it_was():
    model = DepthwiseIntoAdd().train()
    model.b.weight.requires_grad_(False)
    ChannelDependency(model, torch.randn(1, 3, 5, 5))
    assert model.training and not model.b.weight.requires_grad and model.a.weight.requires_grad


@pytest.mark.parametrize("cls", [ChannelDependency, GroupDependency])
def test_bad_arguments_are_named(cls):
    with pytest.raises(ConfigError, match="traced_model .* is not used by nncore"):
        cls(GroupedNet(), torch.randn(1, 3, 6, 6), object())
    with pytest.raises(ConfigError, match="needs model .* and dummy_input"):
        cls(GroupedNet())
