"""APoZ and mean-activation filter pruners: statistics over the user's own batches."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nncore.builtin_pruners import ActivationAPoZRankFilterPruner, ActivationMeanRankFilterPruner
from nncore.errors import ConfigError
from nncore.registry import get_compressor
from tests.conftest import assert_untouched, make_tiny_cnn, snapshot


def scaled_filters(scales: list[float], biases: list[float]) -> nn.Sequential:
    """A 1x1 conv whose filter ``c`` computes ``scales[c] * x + biases[c]``, then a head."""
    conv = nn.Conv2d(1, len(scales), 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(scales).view(-1, 1, 1, 1))
        conv.bias.copy_(torch.tensor(biases))
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))


def positive_batch() -> torch.Tensor:
    return torch.rand(4, 1, 3, 3) + 0.1


def channel_mask(pruner) -> list[float]:
    return pruner.wrappers["0"].weight_mask.flatten(1).amax(1).tolist()


def test_apoz_prunes_the_filters_a_large_negative_bias_made_dead():
    # Filters 1 and 3 are dead (APoZ 1); filter 2 is zero on about half of the inputs.
    model = scaled_filters([1.0, 1.0, 1.0, 5.0], [0.0, -100.0, -0.6, -100.0])
    pruner = ActivationAPoZRankFilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    with torch.no_grad():
        x = positive_batch()
        model(x)
    assert channel_mask(pruner) == [1.0, 0.0, 1.0, 0.0]
    apoz = 1 - pruner.filter_importance(pruner.wrappers["0"])
    assert apoz.tolist() == pytest.approx([0.0, 1.0, (x + -0.6 <= 0).float().mean().item(), 1.0])


def test_mean_activation_prunes_the_lowest_mean_filters():
    model = scaled_filters([1.0, 2.0, 3.0, 0.5], [0.0, -100.0, 0.0, 0.0])
    pruner = ActivationMeanRankFilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    with torch.no_grad():
        x = positive_batch()
        model(x)
    mean = x.mean().item()
    assert pruner.filter_importance(pruner.wrappers["0"]).tolist() == pytest.approx([mean, 0.0, 3 * mean, 0.5 * mean])
    assert channel_mask(pruner) == [1.0, 0.0, 1.0, 0.0]


def test_relu6_clips_before_averaging():
    model = scaled_filters([100.0, 1.0], [0.0, 0.0])
    pruner = ActivationMeanRankFilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], activation="relu6")
    pruner.compress()
    with torch.no_grad():
        x = positive_batch()
        model(x)
    assert pruner.filter_importance(pruner.wrappers["0"]).tolist() == pytest.approx([6.0, x.mean().item()])


@pytest.mark.parametrize("pruner_class", [ActivationAPoZRankFilterPruner, ActivationMeanRankFilterPruner])
def test_masks_stay_all_ones_until_the_statistics_batches_are_seen(pruner_class):
    model = scaled_filters([1.0, 1.0, 2.0, 3.0], [-100.0, -100.0, 0.0, 0.0])
    pruner = pruner_class(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], statistics_batch_num=2)
    pruner.compress()
    assert channel_mask(pruner) == [1.0] * 4
    with torch.no_grad():
        model(positive_batch())
        assert channel_mask(pruner) == [1.0] * 4
        model(positive_batch())
    assert channel_mask(pruner) == [0.0, 0.0, 1.0, 1.0]
    assert pruner.batches_seen == 2


def test_statistics_from_training_batches_mask_after_the_optimizer_step():
    model = scaled_filters([1.0, 1.0, 2.0, 3.0], [-100.0, -100.0, 0.0, 0.0])
    pruner = ActivationAPoZRankFilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = model(positive_batch()).sum()
    assert channel_mask(pruner) == [1.0] * 4  # not before the backward pass: it needs the weights
    loss.backward()
    optimizer.step()
    assert channel_mask(pruner) == [0.0, 0.0, 1.0, 1.0]
    assert model[0].module.weight[:2].eq(0).all()


def test_seed_usage_and_registry_names():
    assert get_compressor("apoz") is ActivationAPoZRankFilterPruner
    assert get_compressor("mean_activation") is ActivationMeanRankFilterPruner
    model = make_tiny_cnn()
    pruner = ActivationAPoZRankFilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], statistics_batch_num=1)
    pruner.compress()
    with torch.no_grad():
        model(torch.randn(2, 1, 6, 6))
    assert model.conv2.weight_mask.flatten(1).amax(1).sum().item() == 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"statistics_batch_num": 0}, "statistics_batch_num must be an int >= 1, got 0"),
        ({"statistics_batch_num": 1.5}, "statistics_batch_num must be an int >= 1, got 1.5"),
        ({"activation": "tanh"}, "activation must be one of 'relu', 'relu6', got 'tanh'"),
        ({"dependency_aware": True}, "dependency_aware=True needs dummy_input"),
    ],
)
@pytest.mark.parametrize("pruner_class", [ActivationAPoZRankFilterPruner, ActivationMeanRankFilterPruner])
def test_bad_arguments_are_refused_and_the_model_is_untouched(pruner_class, kwargs, message):
    model = make_tiny_cnn()
    before = snapshot(model)
    with pytest.raises(ConfigError, match=message):
        pruner_class(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], **kwargs)
    assert_untouched(model, before)


class DataDependentNet(nn.Module):
    """conv -> bn -> relu with a data-dependent branch, so torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 1.0, 2.0, 3.0]).view(4, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([-100.0, -100.0, 0.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() < 0:
            x = -x
        return torch.relu(self.bn(self.conv(x)))


def test_the_batchnorm_trace_on_the_first_batch_is_not_counted_as_a_statistics_batch():
    model = DataDependentNet()
    pruner = ActivationMeanRankFilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    with torch.no_grad():
        model(positive_batch())
    assert pruner.batches_seen == 1
    assert pruner.wrappers["conv"].weight_mask.flatten(1).amax(1).tolist() == [0.0, 0.0, 1.0, 1.0]
    assert pruner.masks()["bn"]["weight"].tolist() == [0.0, 0.0, 1.0, 1.0]
