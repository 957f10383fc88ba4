"""L1 / L2 / FPGM filter pruners: hand-computed rankings on tiny layers, counts and errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nncore.builtin_pruners import FPGMPruner, L1FilterPruner, L2FilterPruner
from nncore.builtin_pruners.filter_base import channel_mask_from_importance
from nncore.builtin_pruners.filter_weight import filter_l1_norms, filter_l2_norms, geometric_median_distances
from nncore.errors import ConfigError
from nncore.registry import get_compressor
from tests.conftest import assert_untouched, make_tiny_cnn, snapshot

# Four 1x2x2 filters: L1 norms 4, 3, 2, 8 and L2 norms 2, 3, 1, 4.
FILTERS = [
    [1.0, -1.0, 1.0, -1.0],
    [3.0, 0.0, 0.0, 0.0],
    [0.5, 0.5, 0.5, -0.5],
    [2.0, 2.0, -2.0, 2.0],
]


def conv_with_filters(filters: list[list[float]]) -> nn.Sequential:
    conv = nn.Conv2d(1, len(filters), 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(filters).view(len(filters), 1, 2, 2))
        conv.bias.fill_(0.5)
    return nn.Sequential(conv)


def channel_mask(pruner) -> list[float]:
    return pruner.wrappers["0"].weight_mask.flatten(1).amax(1).tolist()


def test_norms_by_hand():
    weight = torch.tensor(FILTERS).view(4, 1, 2, 2)
    assert filter_l1_norms(weight).tolist() == [4.0, 3.0, 2.0, 8.0]
    assert filter_l2_norms(weight).tolist() == [2.0, 3.0, 1.0, 4.0]


@pytest.mark.parametrize(
    "pruner_class, expected",
    [(L1FilterPruner, [1.0, 0.0, 0.0, 1.0]), (L2FilterPruner, [0.0, 1.0, 0.0, 1.0])],
)
def test_the_smallest_norm_filters_are_pruned_with_their_bias(pruner_class, expected):
    model = conv_with_filters(FILTERS)
    pruner = pruner_class(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    assert channel_mask(pruner) == expected
    wrapper = pruner.wrappers["0"]
    assert wrapper.bias_mask.tolist() == expected
    kept = torch.tensor(expected).view(4, 1, 1, 1)
    assert torch.equal(model[0].module.weight, torch.tensor(FILTERS).view(4, 1, 2, 2) * kept)
    assert model[0].module.bias.tolist() == [0.5 * k for k in expected]


def test_fpgm_prunes_the_filters_nearest_the_geometric_median():
    # Five 1-element filters 0, 1, 2, 4, 10: summed distances 17, 14, 13, 15, 33.
    conv = nn.Conv1d(1, 5, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.0, 1.0, 2.0, 4.0, 10.0]).view(5, 1, 1))
    assert geometric_median_distances(conv.weight).tolist() == [17.0, 14.0, 13.0, 15.0, 33.0]
    model = nn.Sequential(conv)
    pruner = FPGMPruner(model, [{"sparsity": 0.4, "op_types": ["Conv1d"]}])
    pruner.compress()
    # The two smallest sums (filters 2 and 1) go; L1 would have pruned filters 0 and 1.
    assert pruner.wrappers["0"].weight_mask.flatten().tolist() == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert pruner.wrappers["0"].bias_mask is None


@pytest.mark.parametrize("sparsity, pruned", [(0.3, 1), (0.25, 1), (0.6, 2), (0.0, 0), (1.0, 3)])
def test_round_sparsity_times_filters_are_pruned_keeping_at_least_one(sparsity, pruned):
    model = conv_with_filters(FILTERS)
    L1FilterPruner(model, [{"sparsity": sparsity, "op_types": ["Conv2d"]}]).compress()
    assert model[0].weight_mask.flatten(1).amax(1).eq(0).sum().item() == pruned


def test_grouped_masks_prune_equally_in_every_group():
    importance = torch.tensor([5.0, 1.0, 3.0, 2.0, 9.0, 8.0, 0.5, 7.0])
    mask = channel_mask_from_importance(importance, 0.5, groups=2)
    # Group [5, 1, 3, 2] loses 1 and 2; group [9, 8, 0.5, 7] loses 0.5 and 7.
    assert mask.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0]


def test_seed_usage_with_the_registry_names():
    assert get_compressor("l1") is L1FilterPruner
    assert get_compressor("l2") is L2FilterPruner
    assert get_compressor("fpgm") is FPGMPruner
    model = make_tiny_cnn()
    pruner = L1FilterPruner(model, [{"sparsity": 0.8, "op_types": ["Conv2d"]}])
    pruner.compress()
    # conv1: round(0.8 * 4) = 3 pruned, conv2: round(0.8 * 8) = 6 pruned.
    assert model.conv1.weight_mask.flatten(1).amax(1).sum().item() == 1
    assert model.conv2.weight_mask.flatten(1).amax(1).sum().item() == 2


def test_update_masks_with_explicit_sparsities_changes_only_those_layers():
    model = make_tiny_cnn()
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    pruner.update_masks({"conv2": 0.25})
    assert model.conv1.weight_mask.flatten(1).amax(1).sum().item() == 2
    assert model.conv2.weight_mask.flatten(1).amax(1).sum().item() == 6


@pytest.mark.parametrize("pruner_class", [L1FilterPruner, L2FilterPruner, FPGMPruner])
def test_batchnorm_layers_are_refused_and_the_model_is_untouched(pruner_class):
    model = make_tiny_cnn()
    before = snapshot(model)
    with pytest.raises(ConfigError, match=r"cannot compress 'bn1' \(BatchNorm2d\): .* supports only Conv1d, Conv2d, "
                                          r"Linear, Conv1D"):
        pruner_class(model, [{"sparsity": 0.5, "op_types": ["Conv2d", "BatchNorm2d"]}])
    assert_untouched(model, before)


def test_default_op_types_select_the_convolutions_only():
    pruner = L2FilterPruner(make_tiny_cnn(), [{"sparsity": 0.5, "op_types": ["default"]}])
    assert [config.name for config in pruner.layer_configs] == ["conv1", "conv2"]
