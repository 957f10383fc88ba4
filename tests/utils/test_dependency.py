"""ChannelDependency / GroupDependency: the speedup's topology analysis, for pruners."""
from __future__ import annotations

import torch
from torch import nn

from nncore.utils.dependency import ChannelDependency, GroupDependency
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
        return self.c(self.dw(self.b(self.a(x))))


def test_group_dependency_and_depthwise_coupling():
    model = GroupedNet()
    dummy = torch.randn(1, 3, 6, 6)
    groups = GroupDependency(model, dummy)
    assert groups.dependency == {"a": 4, "b": 4, "dw": 1, "c": 1}
    assert find_set(groups.dependency_sets, "b") == {"b", "dw"}  # depthwise follows its input
    assert find_set(ChannelDependency(model, dummy).dependency_sets, "a") == {"a"}


def test_concatenation_does_not_couple_its_inputs():
    class Cat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], 1))

    sets = ChannelDependency(Cat(), torch.randn(1, 3, 4, 4)).dependency_sets
    assert sorted(map(sorted, sets)) == [["a"], ["b"], ["c"]]
