"""Each algorithm's arithmetic, bit semantics, straight-through gradients and step() state."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nncore.builtin_quantizers import BNNQuantizer, DoReFaQuantizer, LsqQuantizer, NaiveQuantizer, QAT_Quantizer
from nncore.builtin_quantizers.functional import affine_qparams, fake_quantize

from tests.builtin_quantizers.helpers import make_convnet, run_training_batches


def layer_net(out_features: int = 48, in_features: int = 64) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(in_features, out_features))


def quantized_weight(quantizer, name: str = "0") -> torch.Tensor:
    return quantizer.wrappers[name].quantized_parameters()[0]


def distinct(values: torch.Tensor) -> int:
    return torch.unique(values).numel()


def test_affine_parameters_and_fake_quantization_by_hand():
    scale, zero_point = affine_qparams(torch.tensor(-1.0), torch.tensor(3.0), 8)
    assert scale.item() == pytest.approx(4 / 255)
    assert zero_point.item() == 64  # round(1 / (4 / 255)) = round(63.75)
    x = torch.tensor([-2.0, -1.0, 0.0, 0.01, 1.0, 5.0])
    expected = (torch.clamp(torch.round(x / scale + 64), 0, 255) - 64) * scale
    assert torch.equal(fake_quantize(x, scale, zero_point, 0, 255), expected)
    assert fake_quantize(x, scale, zero_point, 0, 255)[2] == 0  # zero is exact


@pytest.mark.parametrize(("bits", "scheme", "limit"), [
    (8, "per_tensor_affine", 256), (4, "per_tensor_affine", 16), (8, "per_tensor_symmetric", 255),
])
def test_qat_weights_have_at_most_2_to_the_bits_values_per_tensor(bits, scheme, limit):
    model = layer_net()
    quantizer = QAT_Quantizer(model, [{"quant_types": ["weight"], "quant_bits": bits, "quant_scheme": scheme,
                                       "op_types": ["Linear"]}])
    quantizer.compress()
    weight, float_weight = quantized_weight(quantizer), model[0].module.weight.detach()
    assert limit // 2 < distinct(weight) <= limit
    assert (weight - float_weight).abs().max() <= quantizer.wrappers["0"].weight_scale.max() / 2 + 1e-7


@pytest.mark.parametrize(("bits", "limit"), [(8, 256), (4, 16)])
def test_per_channel_weights_have_at_most_2_to_the_bits_values_per_channel(bits, limit):
    model = layer_net()
    quantizer = QAT_Quantizer(model, [{"quant_types": ["weight"], "quant_bits": bits, "quant_scheme": "per_channel_affine",
                                       "op_types": ["Linear"]}])
    quantizer.compress()
    weight = quantized_weight(quantizer)
    assert quantizer.wrappers["0"].weight_scale.shape == (48,)
    assert all(distinct(row) <= limit for row in weight)
    assert distinct(weight) > limit  # channels have their own grids
    row_ranges = model[0].module.weight.detach().aminmax(dim=1)
    assert torch.allclose(quantizer.wrappers["0"].weight_scale,
                          (row_ranges.max.clamp(min=0) - row_ranges.min.clamp(max=0)) / (2**bits - 1))


def test_folded_batchnorm_weights_keep_8_bit_semantics_per_channel_after_unfolding():
    model = make_convnet()
    quantizer = QAT_Quantizer(model, [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Conv2d"]}],
                              dummy_input=torch.randn(1, 1, 8, 8))
    quantizer.compress()
    run_training_batches(model, quantizer, batches=2)
    exported = quantizer.clean_state_dict()["conv1.weight"]
    assert all(distinct(channel) <= 256 for channel in exported)


def test_naive_quantizes_weights_symmetrically_to_8_bits():
    model = layer_net()
    quantizer = NaiveQuantizer(model, [{"op_types": ["Linear"]}])
    quantizer.compress()
    weight, float_weight = quantized_weight(quantizer), model[0].module.weight.detach()
    scale = float_weight.abs().max() / 127
    assert torch.allclose(weight, torch.round(float_weight / scale) * scale)
    assert distinct(weight) <= 255


def test_dorefa_maps_weights_to_2_to_the_bits_levels_in_minus_one_to_one():
    model = layer_net()
    quantizer = DoReFaQuantizer(model, [{"quant_types": ["weight"], "quant_bits": 4, "op_types": ["Linear"]}])
    quantizer.compress()
    weight, float_weight = quantized_weight(quantizer), model[0].module.weight.detach()
    squashed = torch.tanh(float_weight)
    expected = 2 * torch.round((squashed / (2 * squashed.abs().max()) + 0.5) * 15) / 15 - 1
    assert torch.allclose(weight, expected)
    assert distinct(weight) <= 16 and weight.min() >= -1 and weight.max() <= 1


def test_bnn_binarizes_with_straight_through_gradients_and_clips_weights_on_step():
    model = layer_net(4, 3)
    quantizer = BNNQuantizer(model, [{"quant_types": ["weight", "output"], "op_types": ["Linear"]}])
    quantizer.compress()
    with torch.no_grad():
        model[0].module.weight.copy_(torch.tensor([[0.5, -2.0, 0.0]] * 4))
        model[0].module.bias.zero_()
    x = torch.tensor([[1.0, 0.25, 3.0]], requires_grad=True)
    out = model(x)
    assert set(quantized_weight(quantizer).unique().tolist()) == {-1.0, 1.0}
    pre_activation = x.detach() @ torch.tensor([[1.0, -1.0, 1.0]] * 4).T  # 1 - 0.25 + 3 = 3.75
    assert torch.equal(out, torch.sign(pre_activation))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))  # |pre-activation| > 1: hardtanh STE blocks
    assert model[0].module.weight.grad is not None
    quantizer.step()
    assert model[0].module.weight.min() == -1.0  # -2 clipped to [-1, 1]


def test_lsq_step_sizes_start_as_in_the_paper_learn_and_join_the_optimizer():
    model = layer_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    quantizer = LsqQuantizer(model, [{"quant_types": ["weight", "input"], "quant_bits": 4, "op_types": ["Linear"]}], optimizer)
    quantizer.compress()
    wrapper = quantizer.wrappers["0"]
    float_weight = wrapper.module.weight.detach()
    assert wrapper.weight_step.item() == pytest.approx(float(2 * float_weight.abs().mean() / 7**0.5))
    assert any(wrapper.weight_step is p for group in optimizer.param_groups for p in group["params"])
    x = torch.rand(16, 64)  # non-negative: the input is quantized unsigned
    model.train()
    model(x).pow(2).sum().backward()
    assert not bool(wrapper.input_signed)
    assert wrapper.input_step.item() == pytest.approx(float(2 * x.abs().mean() / 15**0.5))
    assert wrapper.weight_step.grad is not None and wrapper.input_step.grad is not None
    before = wrapper.weight_step.item()
    optimizer.step()
    assert wrapper.weight_step.item() != before
    weight = quantized_weight(quantizer)
    levels = weight / wrapper.weight_step.detach()
    assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.min() >= -8 and levels.max() <= 7
    assert distinct(weight) <= 16
    assert wrapper.tracked_max_input.item() == pytest.approx(15 * wrapper.input_step.item())


def test_qat_tracks_activation_ranges_with_an_ema_and_waits_for_quant_start_step():
    model = layer_net(2, 2)
    quantizer = QAT_Quantizer(model, [{"quant_types": ["input"], "quant_bits": 2, "quant_start_step": 2,
                                       "op_types": ["Linear"]}])
    quantizer.compress()
    wrapper = quantizer.wrappers["0"]
    model.train()
    first, second = torch.tensor([[-1.0, 2.0]]), torch.tensor([[-3.0, 4.0]])
    reference = wrapper.module(second)
    model(first)
    assert (wrapper.tracked_min_input.item(), wrapper.tracked_max_input.item()) == (-1.0, 2.0)
    quantizer.step()
    assert torch.equal(model(second), reference)  # step 1 < quant_start_step: not quantized
    assert wrapper.tracked_min_input.item() == pytest.approx(0.99 * -1 + 0.01 * -3)
    assert wrapper.tracked_max_input.item() == pytest.approx(0.99 * 2 + 0.01 * 4)
    quantizer.step()
    model.eval()
    x = torch.tensor([[0.3, 1.1]])
    scale, zero_point = affine_qparams(wrapper.tracked_min_input, wrapper.tracked_max_input, 2)
    expected = wrapper.module(fake_quantize(x, scale, zero_point, 0, 3))
    assert torch.equal(model(x), expected)
    assert not torch.equal(model(x), wrapper.module(x))


def test_folded_batchnorm_in_eval_mode_quantizes_the_folded_weight():
    model = make_convnet()
    quantizer = QAT_Quantizer(model, [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Conv2d"]}],
                              dummy_input=torch.randn(1, 1, 8, 8))
    quantizer.compress()
    run_training_batches(model, quantizer, batches=2)
    model.eval()
    wrapper, bn = model.conv1, model.conv1.bn
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded = wrapper.module.weight * factor.reshape(-1, 1, 1, 1)
    scale, zero_point = affine_qparams(folded.min(), folded.max(), 8)
    weight = fake_quantize(folded, scale, zero_point, 0, 255)
    x = torch.randn(2, 1, 8, 8)
    expected = nn.functional.conv2d(x, weight, bn.bias - bn.running_mean * factor, padding=1)
    assert torch.allclose(wrapper(x), expected, atol=1e-5)
