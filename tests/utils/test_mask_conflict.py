"""fix_mask_conflict: shared channels for adds, group alignment, concat padding; files and dicts."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nncore.artifacts import MASK_METADATA_KEY
from nncore.errors import ArtifactError, ConfigError
from nncore.utils import fix_mask_conflict


def filter_mask(module: nn.Module, pruned: list[int]) -> dict:
    weight = torch.ones_like(module.weight)
    weight[pruned] = 0
    bias = torch.ones_like(module.bias)
    bias[pruned] = 0
    return {"weight": weight, "bias": bias}


def pruned(entry: dict) -> list[int]:
    return entry["weight"].flatten(1).eq(0).all(1).nonzero().flatten().tolist()


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 1)
        self.left, self.right = nn.Conv2d(6, 6, 1), nn.Conv2d(6, 6, 1)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        return self.head(torch.relu(self.bn(self.left(x)) + self.right(x)))


DUMMY = torch.randn(1, 3, 4, 4)


def test_added_layers_keep_every_channel_one_of_them_keeps():
    model = Residual()
    bn = {"weight": torch.tensor([0.0, 0, 1, 1, 1, 1]), "bias": torch.tensor([0.0, 0, 1, 1, 1, 1])}
    masks = {"left": filter_mask(model.left, [0, 1]), "bn": bn, "right": filter_mask(model.right, [1, 2])}
    fixed = fix_mask_conflict(masks, model, DUMMY)
    assert pruned(fixed["left"]) == pruned(fixed["right"]) == [1]
    assert fixed["left"]["bias"].tolist() == fixed["right"]["bias"].tolist() == [1, 0, 1, 1, 1, 1]
    assert fixed["bn"]["weight"].tolist() == [1, 0, 1, 1, 1, 1]  # the BatchNorm on that channel follows
    assert pruned(masks["left"]) == [0, 1]  # the dict given is not modified


def test_an_unmasked_partner_keeps_every_channel():
    model = Residual()
    fixed = fix_mask_conflict({"left": filter_mask(model.left, [0, 3])}, model, DUMMY)
    assert pruned(fixed["left"]) == []
    assert set(fixed) == {"left"}


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 4, 1, groups=2)

    def forward(self, x):
        return self.b(self.a(x))


@pytest.mark.parametrize("before, after", [([0, 1, 4], [0, 4]), ([0, 1, 2], [])])
def test_a_layer_feeding_a_grouped_conv_prunes_as_many_filters_in_every_group(before, after):
    model = Grouped()
    fixed = fix_mask_conflict({"a": filter_mask(model.a, before)}, model, DUMMY)
    assert pruned(fixed["a"]) == after  # groups [0..3] and [4..7]: the first pruned of each stay pruned


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1, bias=False)
        self.c = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], 1))


def test_unmasked_layers_of_a_concatenation_get_all_ones_masks():
    model = Concat()
    fixed = fix_mask_conflict({"a": filter_mask(model.a, [2])}, model, DUMMY)
    assert pruned(fixed["a"]) == [2]
    assert torch.equal(fixed["b"]["weight"], torch.ones(4, 3, 1, 1)) and fixed["b"]["bias"] is None
    assert "c" not in fixed


def test_a_mask_file_with_metadata_is_read_and_fine_grained_masks_are_left_alone(tmp_path):
    model = Residual()
    fine = torch.ones_like(model.left.weight)
    fine[0, 0] = 0
    path = tmp_path / "mask.pth"
    torch.save({"left": {"weight": fine, "bias": None}, "right": filter_mask(model.right, [5]),
                MASK_METADATA_KEY: {"dummy_input": {"shape": [1, 3, 4, 4], "dtype": "float32"}}}, path)
    fixed = fix_mask_conflict(str(path), model, DUMMY)
    assert torch.equal(fixed["left"]["weight"], fine)
    assert pruned(fixed["right"]) == []  # the fine-grained partner keeps channel 5


def test_bad_input_is_named():
    model = Residual()
    with pytest.raises(ArtifactError, match="'nope' names no module"):
        fix_mask_conflict({"nope": {"weight": torch.ones(1), "bias": None}}, model, DUMMY)
    with pytest.raises(ConfigError, match="needs model"):
        fix_mask_conflict({}, None, DUMMY)
    with pytest.raises(ConfigError, match="traced .* is not used by nncore"):
        fix_mask_conflict({}, model, DUMMY, object())
