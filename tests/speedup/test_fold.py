"""Constant channels fold into the layers that read them: one test per rule, hand-computed."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nncore.errors import SpeedupError
from nncore.speedup import (LinearRule, ModelSpeedup, load_pruned, register_shrink_rule, save_pruned,
                            unregister_shrink_rule)
from tests.speedup.speedup_helpers import assert_same_function, masked_copy

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SHAPE = (2, 3, 6, 6)


def set_bn(bn: nn.BatchNorm2d, channel: int, mean: float, var: float, weight: float, bias: float) -> None:
    """BatchNorm with eps 0: channel ``channel`` maps 0 to ``(0 - mean) / sqrt(var) * weight + bias``."""
    bn.eps = 0.0
    bn.running_mean[channel], bn.running_var[channel] = mean, var
    bn.weight.data[channel], bn.bias.data[channel] = weight, bias


def filter_mask(conv: nn.Conv2d, *filters: int) -> dict:
    weight = torch.ones_like(conv.weight)
    weight[list(filters)] = 0
    return {"weight": weight, "bias": None}


def speedup(model: nn.Module, masks: dict, shape=SHAPE) -> ModelSpeedup:
    """Speed ``model`` up (checking it still computes the masked model's function)."""
    reference = masked_copy(model, masks)
    run = ModelSpeedup(model, torch.randn(*shape), masks)
    run.speedup_model()
    assert_same_function(model, reference, shape)
    return run


class Reader(nn.Module):
    """conv3x3 (masked) -> ``middle`` (BatchNorm, activations, pooling ...) -> ``reader``."""

    def __init__(self, middle: nn.Module, reader: nn.Module, pool_to: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.middle = middle
        self.reader = reader
        self.pool_to = pool_to

    def forward(self, x):
        x = self.middle(self.c1(x))
        if self.pool_to is not None:
            x = torch.flatten(F.adaptive_avg_pool2d(x, self.pool_to), 1)
        return self.reader(x)


def bn_relu(mean=0.25, var=4.0, weight=2.0, bias=0.5) -> nn.Sequential:
    """Channel 1's zero becomes (0 - 0.25) / 2 * 2 + 0.5 = 0.25 with the defaults."""
    bn = nn.BatchNorm2d(3).eval()
    set_bn(bn, 1, mean, var, weight, bias)
    return nn.Sequential(bn, nn.ReLU())


def test_batchnorm_constant_folds_into_a_1x1_convolution_without_bias():
    model = Reader(bn_relu(), nn.Conv2d(3, 2, 1, bias=False)).eval()
    model.reader.weight.data[:, 1, 0, 0] = torch.tensor([2.0, -4.0])
    run = speedup(model, {"c1": filter_mask(model.c1, 1)})
    assert model.c1.out_channels == 2 and model.middle[0].num_features == 2
    assert model.reader.weight.shape == (2, 2, 1, 1)
    assert torch.equal(model.reader.bias.data, torch.tensor([0.5, -1.0]))  # 0.25 * [2, -4]
    assert run.summary.folded == {"reader": 1}
    assert "reader: 1 removed constant channel(s) folded into the bias" in str(run.summary)
    assert (run.summary.masked_filters, run.summary.kept_filters) == (1, 0)


@pytest.mark.parametrize("before", [[nn.ReLU()], [nn.MaxPool2d(3, 1, 1), nn.ReLU(), nn.Dropout()]],
                         ids=["relu", "pool-relu-dropout"])
def test_relu_then_batchnorm_constant_adds_to_an_existing_bias(before):
    bn = nn.BatchNorm2d(3).eval()
    set_bn(bn, 1, mean=0.5, var=1.0, weight=2.0, bias=0.0)  # relu(0) = 0 -> (0 - 0.5) * 2 = -1
    model = Reader(nn.Sequential(*before, bn), nn.Conv2d(3, 2, 1)).eval()
    model.reader.weight.data[:, 1, 0, 0] = torch.tensor([1.0, 3.0])
    model.reader.bias.data = torch.tensor([0.5, 0.5])
    speedup(model, {"c1": filter_mask(model.c1, 1)})
    assert model.reader.in_channels == 2
    assert torch.equal(model.reader.bias.data, torch.tensor([-0.5, -2.5]))  # 0.5 + (-1) * [1, 3]


def test_constant_made_zero_by_relu_goes_even_before_a_padded_convolution():
    model = Reader(bn_relu(mean=0.0, var=1.0, weight=1.0, bias=-0.5), nn.Conv2d(3, 2, 3, padding=1)).eval()
    bias = model.reader.bias.detach().clone()
    run = speedup(model, {"c1": filter_mask(model.c1, 1)})
    assert model.reader.in_channels == 2
    assert torch.equal(model.reader.bias.data, bias)  # relu(-0.5) = 0: nothing to fold
    assert run.summary.folded == {}


def test_zero_padded_convolution_keeps_the_constant_and_says_why():
    model = Reader(bn_relu(), nn.Conv2d(3, 2, 3, padding=1)).eval()
    run = speedup(model, {"c1": filter_mask(model.c1, 1)})
    assert model.c1.out_channels == 3 and model.reader.in_channels == 3
    (reason,) = run.summary.kept_by
    assert "constant, not zero" in reason and "Conv2d module 'reader'" in reason and "zero padding" in reason
    assert (run.summary.masked_filters, run.summary.kept_filters) == (1, 1)


def test_reflect_padded_convolution_folds_the_constant_summed_over_its_kernel():
    reader = nn.Conv2d(3, 2, 3, padding=1, padding_mode="reflect", bias=False)
    model = Reader(bn_relu(), reader).eval()
    model.reader.weight.data[:, 1] = torch.tensor([0.5, 1.0]).view(2, 1, 1) * torch.ones(3, 3)
    speedup(model, {"c1": filter_mask(model.c1, 1)})
    assert model.reader.in_channels == 2
    assert torch.equal(model.reader.bias.data, torch.tensor([1.125, 2.25]))  # 0.25 * 9 * [0.5, 1]


def test_grouped_1x1_convolution_folds_per_group():
    bn = nn.BatchNorm2d(4).eval()
    set_bn(bn, 0, mean=-1.0, var=1.0, weight=1.0, bias=0.0)  # channel 0 -> 1
    set_bn(bn, 2, mean=-2.0, var=1.0, weight=1.0, bias=0.0)  # channel 2 -> 2
    model = Reader(nn.Sequential(bn, nn.ReLU()), nn.Conv2d(4, 4, 1, groups=2, bias=False)).eval()
    model.c1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    model.reader.weight.data[:, 0, 0, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # first input of each group
    speedup(model, {"c1": filter_mask(model.c1, 0, 2)})
    assert model.reader.weight.shape == (4, 1, 1, 1) and model.reader.groups == 2
    assert torch.equal(model.reader.bias.data, torch.tensor([1.0, 2.0, 6.0, 8.0]))  # group 0 reads 1, group 1 reads 2


@pytest.mark.parametrize("pool, kept", [(nn.MaxPool2d(3, 1, 1), False), (nn.AvgPool2d(2), False),
                                        (nn.AvgPool2d(3, 1, 1, count_include_pad=False), False),
                                        (nn.AvgPool2d(3, 1, 1), True)])
def test_pooling_carries_the_constant_into_a_linear_layer(pool, kept):
    bn = nn.BatchNorm2d(3).eval()
    set_bn(bn, 0, mean=-1.0, var=1.0, weight=1.0, bias=0.0)  # channel 0 -> 1
    model = Reader(nn.Sequential(bn, nn.ReLU(), pool), nn.Linear(3, 2), pool_to=1).eval()
    model.reader.weight.data[:, 0] = torch.tensor([3.0, 5.0])
    model.reader.bias.data = torch.tensor([1.0, 1.0])
    speedup(model, {"c1": filter_mask(model.c1, 0)})
    if kept:  # zero padding counted in the average: border pixels are 4/9 or 6/9 of the constant
        assert model.reader.in_features == 3
    else:
        assert model.reader.in_features == 2
        assert torch.equal(model.reader.bias.data, torch.tensor([4.0, 6.0]))  # 1 + 1 * [3, 5]


def test_flatten_into_linear_folds_every_pixel_of_the_channel():
    bn = nn.BatchNorm2d(3).eval()
    set_bn(bn, 0, mean=-1.0, var=1.0, weight=1.0, bias=0.0)  # channel 0 -> 1
    model = Reader(nn.Sequential(bn, nn.ReLU()), nn.Linear(12, 2), pool_to=2).eval()
    model.reader.weight.data[:, :4] = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 1.0]])
    model.reader.bias.data = torch.zeros(2)
    speedup(model, {"c1": filter_mask(model.c1, 0)})
    assert model.reader.in_features == 8
    assert torch.equal(model.reader.bias.data, torch.tensor([10.0, 1.0]))


@pytest.mark.parametrize("padding, kept", [(0, False), (1, True)])
def test_depthwise_convolution_carries_the_constant_unless_it_pads(padding, kept):
    depthwise = nn.Conv2d(3, 3, 3, padding=padding, groups=3)
    depthwise.weight.data.fill_(0.5)
    depthwise.bias.data = torch.tensor([0.0, 0.125, 0.0])
    model = Reader(nn.Sequential(*bn_relu(), depthwise), nn.Conv2d(3, 2, 1, bias=False)).eval()
    model.reader.weight.data[:, 1, 0, 0] = torch.tensor([2.0, 4.0])
    speedup(model, {"c1": filter_mask(model.c1, 1)})
    assert model.reader.in_channels == (3 if kept else 2)
    if not kept:  # 0.25 * 9 * 0.5 + 0.125 = 1.25
        assert torch.equal(model.reader.bias.data, torch.tensor([2.5, 5.0]))


def test_masked_filter_with_an_unmasked_bias_is_its_bias():
    model = Reader(nn.ReLU(), nn.Linear(3, 2), pool_to=1).eval()
    model.c1 = nn.Conv2d(3, 3, 3, padding=1)
    model.c1.bias.data = torch.tensor([0.0, 1.5, 0.0])
    model.reader.weight.data[:, 1] = torch.tensor([2.0, -2.0])
    model.reader.bias.data = torch.zeros(2)
    masks = {"c1": {"weight": filter_mask(model.c1, 1)["weight"], "bias": torch.ones(3)}}
    speedup(model, masks)
    assert model.c1.out_channels == 2
    assert torch.equal(model.reader.bias.data, torch.tensor([3.0, -3.0]))


class Residual(nn.Module):
    """The constant channel meets a non-constant one in a residual add."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn = bn_relu()[0]
        self.skip = nn.Conv2d(3, 3, 1)
        self.reader = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.reader(self.bn(self.c1(x)) + self.skip(x))


def test_constant_plus_a_non_constant_channel_is_kept():
    model = Residual().eval()
    speedup(model, {"c1": filter_mask(model.c1, 1)})
    assert model.c1.out_channels == 3 and model.reader.in_channels == 3


class TwoBranches(nn.Module):
    """Two masked branches meet in a residual add, a scale and a concatenation before the reader."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.ca = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.cb = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn_a = bn_relu()[0]  # channel 1: 0.25
        self.bn_b = nn.BatchNorm2d(3).eval()
        set_bn(self.bn_b, 1, mean=-1.0, var=1.0, weight=1.0, bias=0.0)  # channel 1: 1
        self.reader = nn.Conv2d(6, 2, 1, bias=False)
        self.reader.weight.data[:, 1, 0, 0] = torch.tensor([2.0, -4.0])

    def forward(self, x):
        y = F.relu(self.bn_a(self.ca(x)) + self.bn_b(self.cb(x))) * 2.0  # channel 1: (0.25 + 1) * 2 = 2.5
        return self.reader(torch.cat([y, x], 1))


def test_constants_add_scale_and_concatenate():
    model = TwoBranches().eval()
    run = speedup(model, {"ca": filter_mask(model.ca, 1), "cb": filter_mask(model.cb, 1)})
    assert model.ca.out_channels == model.cb.out_channels == 2 and model.reader.in_channels == 5
    assert torch.equal(model.reader.bias.data, torch.tensor([5.0, -10.0]))
    assert (run.summary.masked_filters, run.summary.kept_filters) == (2, 0)


class Shared(nn.Module):
    """One 1x1 convolution applied twice: to the constant channel and to ``second(x, constant)``."""

    def __init__(self, second) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn = bn_relu()
        self.reader = nn.Conv2d(3, 2, 1, bias=False)
        self.reader.weight.data[:, 1, 0, 0] = torch.tensor([2.0, -4.0])
        self.second = second

    def forward(self, x):
        y = self.c1(x)
        constant = self.bn(y)
        return self.reader(constant) + self.reader(self.second(x, y, constant))


@pytest.mark.parametrize("second, why", [(lambda x, y, c: x, "neither zero nor a constant the reader folds"),
                                         (lambda x, y, c: y, "its calls read different constants")],
                         ids=["input", "zero"])
def test_layer_called_with_different_constants_keeps_the_channel(second, why):
    model = Shared(second).eval()
    run = speedup(model, {"c1": filter_mask(model.c1, 1)})
    assert model.c1.out_channels == 3 and model.reader.bias is None
    (reason,) = run.summary.kept_by
    assert why in reason


def test_layer_called_twice_with_the_same_constant_folds_once():
    model = Shared(lambda x, y, c: F.relu(c)).eval()  # relu(0.25) = 0.25 in both calls
    speedup(model, {"c1": filter_mask(model.c1, 1)})
    assert model.c1.out_channels == 2
    assert torch.equal(model.reader.bias.data, torch.tensor([0.5, -1.0]))  # each call adds 0.25 * [2, -4]


def test_batchnorm_on_batch_statistics_is_not_constant():
    bn = nn.BatchNorm2d(3, track_running_stats=False)
    model = Reader(nn.Sequential(bn, nn.ReLU()), nn.Conv2d(3, 2, 1)).eval()
    speedup(model, {"c1": filter_mask(model.c1, 1)})
    assert model.c1.out_channels == 3


class FailingLinearRule(LinearRule):
    def shrink(self, module, kept):
        raise RuntimeError("boom")


def test_a_failure_after_a_fold_restores_the_bias():
    model = Reader(bn_relu(), nn.Linear(3, 2, bias=False), pool_to=1).eval()
    before = copy.deepcopy(model.state_dict())
    register_shrink_rule(nn.Linear, FailingLinearRule())
    try:
        with pytest.raises(SpeedupError, match="boom"):
            ModelSpeedup(model, torch.randn(*SHAPE), {"c1": filter_mask(model.c1, 1)}).speedup_model()
    finally:
        unregister_shrink_rule(nn.Linear)
    assert model.reader.bias is None
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())



def test_a_folded_bias_comes_back_with_load_pruned(tmp_path):
    from tests.speedup.models import DenseNetish
    from tests.speedup.speedup_helpers import filter_masks, last_linear, randomize_bn

    torch.manual_seed(0)
    model = randomize_bn(DenseNetish())
    dummy = torch.randn(2, 3, 8, 8)
    masks = filter_masks(model, dummy, 0.5, skip=(last_linear(model),))
    speedup(model, masks, (2, 3, 8, 8))
    assert model.layers[2].conv1.bias is not None  # bias=False in the architecture: added by a fold
    save_pruned(model, tmp_path / "densenet.pt")
    fresh = load_pruned(DenseNetish(), tmp_path / "densenet.pt").eval()
    assert torch.equal(fresh.layers[2].conv1.bias, model.layers[2].conv1.bias)
    x = torch.randn(3, 3, 8, 8)
    assert torch.equal(fresh(x), model(x))
