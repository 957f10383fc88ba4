"""Every architecture family: the sped-up model is smaller and computes the masked function."""
from __future__ import annotations

import pytest
import torch

from tests.speedup.models import FAMILIES, ResNetish, VGGish
from nncore.speedup import ModelSpeedup
from tests.speedup.speedup_helpers import (assert_same_function, count_params, filter_masks, last_linear, masked_copy,
                             randomize_bn)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# removed / masked filters per family, with 50% random filter masks (BatchNorms directly after a
# masked conv masked too, every other BatchNorm random: DenseNet's pre-activation norms turn the
# zeros into constants, which fold into the next 1x1 convolution). Where some stay, the reason is
# not a constant:
REMOVED_OF_MASKED = {
    "conv1d": (8, 12),  # a grouped convolution needs the same number of channels in every group
    "convnext": (32, 52),  # LayerNorm over the channels
    "densenet": (22, 22),
    "efficientnet": (68, 68),
    "efficientnet_b0": (124, 124),
    "inception": (22, 22),
    "mobilenetv2": (116, 116),
    "mobilenetv3": (87, 87),
    "resnet": (60, 60),
    "resnext": (32, 56),  # grouped convolutions
    "shufflenet": (37, 44),  # the channel shuffle couples channels whose masks differ
    "vgg": (32, 32),
    "vit": (32, 120),  # LayerNorm over the hidden size, attention heads
    "vit_mha": (32, 56),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_is_smaller_and_computes_the_masked_function(family):
    build, shape = FAMILIES[family]
    torch.manual_seed(0)
    model = randomize_bn(build())
    dummy = torch.randn(*shape)
    masks = filter_masks(model, dummy, 0.5, skip=(last_linear(model),))
    reference = masked_copy(model, masks)
    before = count_params(model)
    speedup = ModelSpeedup(model, dummy, masks)
    returned = speedup.speedup_model()
    assert returned is model
    assert count_params(model) < before
    assert_same_function(model, reference, shape)
    summary = speedup.summary
    assert (summary.masked_filters - summary.kept_filters, summary.masked_filters) == REMOVED_OF_MASKED[family]
    assert sum(summary.folded.values()) == (11 if family == "densenet" else 0)


def test_vgg_shapes_after_flatten_and_literal_view():
    torch.manual_seed(0)
    model = randomize_bn(VGGish())
    dummy = torch.randn(2, 3, 8, 8)
    masks = filter_masks(model, dummy, 0.5, skip=("classifier.3",))
    reference = masked_copy(model, masks)
    speedup = ModelSpeedup(model, dummy, masks)
    speedup.speedup_model()
    assert model.features[0][0].weight.shape == (4, 3, 3, 3)
    assert model.features[2][0].weight.shape == (8, 4, 3, 3)
    assert model.features[3][0].weight.shape == (8, 8, 3, 3)
    assert model.features[3][1].num_features == 8
    assert model.classifier[0].weight.shape == (12, 8 * 2 * 2)  # flatten: 4 pixels per channel
    assert model.classifier[3].weight.shape == (5, 12)
    assert speedup.summary.rewritten  # the literal view(B, 64) became view(B, 32)
    assert_same_function(model, reference, (2, 3, 8, 8))


def test_residual_groups_prune_together():
    torch.manual_seed(0)
    model = randomize_bn(ResNetish())
    dummy = torch.randn(2, 3, 8, 8)
    masks = filter_masks(model, dummy, 0.5, skip=("fc",))
    reference = masked_copy(model, masks)
    ModelSpeedup(model, dummy, masks).speedup_model()
    stage1 = [model.conv1, model.layer1[0].conv2, model.layer1[1].conv2]
    assert [conv.out_channels for conv in stage1] == [4, 4, 4]
    assert model.layer1[0].conv1.in_channels == 4
    assert model.layer2[0].downsample[0].out_channels == 8
    assert model.fc.in_features == 8
    assert_same_function(model, reference, (2, 3, 8, 8))
