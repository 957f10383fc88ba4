"""PtqQuantizer: calibration from any iterable, observers per layer and quant type, per-channel
weights, BatchNorm folding, the calibration layout export_int8_onnx takes, and bad input."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import nncore
from nncore.builtin_quantizers import PtqQuantizer
from nncore.builtin_quantizers.functional import affine_qparams, fake_quantize
from nncore.errors import ConfigError
from nncore.speedup.int8 import export_int8_onnx
from tests.builtin_quantizers.helpers import make_convnet
from tests.conftest import assert_untouched, snapshot

WIO8 = [{"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_types": ["default"]}]
CALIBRATION_KEYS = {"weight_bits", "weight_scale", "weight_zero_point", "min_weight", "max_weight", "input_bits",
                    "tracked_min_input", "tracked_max_input", "output_bits", "tracked_min_output", "tracked_max_output"}


def batches(count: int = 4, seed: int = 0, size: int = 8) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 1, 8, 8, generator=generator) for _ in range(count)]


def float_ranges(model: nn.Module, data: list[torch.Tensor], names: list[str]) -> dict[tuple[str, str], tuple[float, float]]:
    """min/max of each named module's input and output over ``data``, in the float model (eval)."""
    seen: dict[tuple[str, str], list[torch.Tensor]] = {}

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            seen.setdefault((name, "input"), []).append(inputs[0])
            seen.setdefault((name, "output"), []).append(output)
        return hook

    handles = [model.get_submodule(name).register_forward_hook(record(name)) for name in names]
    model.eval()
    with torch.no_grad():
        for x in data:
            model(x)
    for handle in handles:
        handle.remove()
    return {key: (float(torch.cat([v.flatten() for v in values]).min()), float(torch.cat([v.flatten() for v in values]).max()))
            for key, values in seen.items()}


def test_minmax_ranges_are_those_of_the_float_model_with_batchnorm_folded():
    model = make_convnet()
    data = batches()
    reference = make_convnet()
    expected = float_ranges(reference, data, ["conv1", "bn1", "conv3", "fc"])
    running_mean = model.bn1.running_mean.clone()
    quantizer = PtqQuantizer(model, WIO8, data)
    quantizer.compress()
    assert model.training  # the mode is given back
    assert torch.equal(model.conv1.bn.running_mean, running_mean)  # calibration ran in eval mode
    calibration = quantizer.calibration_config()
    assert calibration["conv1"]["folded_batchnorm"] == "bn1"
    assert (calibration["conv1"]["tracked_min_output"], calibration["conv1"]["tracked_max_output"]) == pytest.approx(
        expected[("bn1", "output")], abs=1e-5)  # conv1's output range includes bn1
    for name in ("conv3", "fc"):
        for kind in ("input", "output"):
            got = (calibration[name][f"tracked_min_{kind}"], calibration[name][f"tracked_max_{kind}"])
            assert got == pytest.approx(expected[(name, kind)], abs=1e-5)
    assert int(model.fc.tracked_batches) == 4


def test_weights_are_symmetric_per_channel_and_the_forward_is_computed_by_hand():
    model = make_convnet()
    quantizer = PtqQuantizer(model, WIO8, batches())
    quantizer.compress()
    model.eval()
    wrapper = model.fc
    weight = wrapper.module.weight.detach()
    scale = weight.abs().amax(dim=1) / 127
    assert torch.allclose(wrapper.weight_scale, scale) and torch.equal(wrapper.weight_zero_point, torch.zeros(5))
    quantized = torch.clamp(torch.round(weight / scale[:, None]), -127, 127) * scale[:, None]
    assert torch.allclose(wrapper.quantized_parameters()[0], quantized)
    x = torch.randn(3, 32) * 2
    in_scale, in_zero = affine_qparams(wrapper.tracked_min_input, wrapper.tracked_max_input, 8)
    out_scale, out_zero = affine_qparams(wrapper.tracked_min_output, wrapper.tracked_max_output, 8)
    expected = fake_quantize(nn.functional.linear(fake_quantize(x, in_scale, in_zero, 0, 255), quantized, wrapper.module.bias),
                             out_scale, out_zero, 0, 255)
    assert torch.allclose(wrapper(x), expected, atol=1e-6)


class KeywordNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, features: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.fc(features * scale)


@pytest.mark.parametrize("form", ["tensors", "pairs", "dataloader", "generator"])
def test_calibration_items_may_be_tensors_pairs_or_a_dataloader_and_num_batches_limits_them(form):
    data = batches(6)
    items = {
        "tensors": data,
        "pairs": [(x, torch.zeros(len(x))) for x in data],
        "dataloader": DataLoader(TensorDataset(torch.cat(data), torch.zeros(48)), batch_size=8),
        "generator": (x for x in data),
    }[form]
    model = make_convnet()
    quantizer = PtqQuantizer(model, WIO8, items, num_batches=3)
    quantizer.compress()
    expected = float_ranges(make_convnet(), data[:3], ["fc"])[("fc", "input")]
    assert (model.fc.tracked_min_input.item(), model.fc.tracked_max_input.item()) == pytest.approx(expected, abs=1e-5)
    assert int(model.fc.tracked_batches) == 3


def test_calibration_items_may_be_dicts_of_keyword_inputs():
    torch.manual_seed(0)
    model = KeywordNet()
    data = [{"features": torch.ones(2, 4), "scale": 3.0}, {"features": -torch.ones(2, 4), "scale": 2.0}]
    PtqQuantizer(model, [{"quant_types": ["input"], "quant_bits": 8, "op_types": ["Linear"]}], data).compress()
    assert (model.fc.tracked_min_input.item(), model.fc.tracked_max_input.item()) == (-2.0, 3.0)


def test_observers_are_chosen_per_layer_and_per_quant_type():
    config = [{"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_types": ["default"]},
              {"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_names": ["conv3"],
               "observer": {"output": "percentile", "weight": "mse"}, "percentile": 90}]
    model = make_convnet()
    quantizer = PtqQuantizer(model, config, batches(), observer="minmax")
    layers = {c.name: c for c in quantizer.layer_configs}
    assert [quantizer.observer_of(layers["conv3"], kind) for kind in ("weight", "input", "output")] == [
        "mse", "minmax", "percentile"]
    assert [quantizer.observer_of(layers["conv2"], kind) for kind in ("weight", "input", "output")] == ["minmax"] * 3
    quantizer.compress()
    minmax = float_ranges(make_convnet(), batches(), ["conv3"])
    calibration = quantizer.calibration_config()["conv3"]
    assert (calibration["tracked_min_input"], calibration["tracked_max_input"]) == pytest.approx(
        minmax[("conv3", "input")], abs=1e-5)
    low, high = minmax[("conv3", "output")]
    assert calibration["tracked_max_output"] < high - 0.05 * (high - low)  # 90%: 5% cut at the top
    absmax = model.conv3.module.weight.detach().reshape(32, -1).abs().amax(dim=1)
    assert torch.all(model.conv3.weight_scale <= absmax / 127 + 1e-9)
    assert torch.any(model.conv3.weight_scale < absmax / 127 - 1e-6)  # mse clips some channels


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse", "entropy"])
def test_export_writes_the_calibration_layout_that_int8_export_takes(observer, tmp_path):
    model = make_convnet()
    quantizer = nncore.get_compressor("ptq")(model, WIO8, batches(8, size=16), observer=observer)
    quantizer.compress()
    model.eval()
    calibration = quantizer.export_model(str(tmp_path / "model.pth"), str(tmp_path / "calibration.pth"))
    assert set(calibration["conv3"]) == CALIBRATION_KEYS and calibration["conv2"]["folded_batchnorm"] == "bn2"
    assert calibration["fc"]["weight_scale"].shape == (5,)
    path = export_int8_onnx(quantizer.inference_model(), tmp_path / "calibration.pth", tmp_path / "int8.onnx", [1, 1, 8, 8])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    got = np.concatenate([session.run(None, {"input": sample[None].numpy()})[0] for sample in x])
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(got - expected).max() <= 0.05 * (expected.max() - expected.min())
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.85


# -- bad input ---------------------------------------------------------------------------------

def expect_config_error(message: str, *args, **kwargs) -> None:
    model = make_convnet()
    before = snapshot(model)
    with pytest.raises(ConfigError) as caught:
        PtqQuantizer(model, *args, **kwargs).compress()
    assert any(message in error for error in caught.value.errors), caught.value.errors
    assert_untouched(model, before)


def test_calibration_data_that_yields_nothing():
    expect_config_error("calibration_data yielded no batch", WIO8, [])
    expect_config_error("calibration_data yielded no batch", WIO8, iter(()))


def test_inputs_of_the_wrong_shape_name_the_item_and_its_shape():
    expect_config_error("calibration_data item 0 (tensor of shape [4, 3, 8, 8]) cannot be run by the model: RuntimeError",
                        WIO8, [torch.randn(4, 3, 8, 8)])


def test_a_bad_batch_later_on_gives_the_model_back_unwrapped():
    expect_config_error("calibration_data item 2 (tensor of shape [2, 8]) cannot be run by the model",
                        WIO8, [torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8), torch.randn(2, 8)])


@pytest.mark.parametrize(("data", "message"), [
    (torch.randn(2, 1, 8, 8), "calibration_data must be an iterable of batches (a DataLoader, a list of tensors, ...), "
                              "got a Tensor; wrap one batch as [x]"),
    (3, "calibration_data must be an iterable of batches"),
    (["not a tensor"], "calibration_data item 0 is a str; expected a tensor, a tuple/list whose first element is the input"),
])
def test_calibration_data_of_the_wrong_kind(data, message):
    expect_config_error(message, WIO8, data)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"observer": "kl"}, "observer: 'kl' is not one of ['minmax', 'percentile', 'mse', 'entropy']"),
    ({"percentile": 101}, "percentile: 101 is out of range; the share of values kept must be in (50, 100]"),
    ({"percentile": 50}, "percentile: 50 is out of range"),
    ({"num_batches": 0}, "num_batches must be a positive int or None, got 0"),
])
def test_bad_arguments(kwargs, message):
    expect_config_error(message, WIO8, batches(), **kwargs)


@pytest.mark.parametrize(("entry", "message"), [
    ({"observer": "kl"}, "config_list[0].observer: 'kl' is not one of ['minmax', 'percentile', 'mse', 'entropy']"),
    ({"observer": {"weight": "entropy"}}, "config_list[0].observer.weight: 'entropy' is not one of ['minmax', 'mse']"),
    ({"observer": {"bias": "mse"}}, "config_list[0].observer: 'bias' is not one of ['weight', 'input', 'output']"),
    ({"quant_types": ["weight"], "observer": {"output": "mse"}},
     "config_list[0].observer.output: 'output' is not in quant_types ['weight']"),
    ({"percentile": 120}, "config_list[0].percentile: 120 is greater than the maximum of 100"),
    ({"quant_bits": 0}, "config_list[0].quant_bits: 0 is less than the minimum of 1"),
    ({"quant_types": ["bias"]}, "config_list[0].quant_types[0]: 'bias' is not one of ['weight', 'input', 'output']"),
])
def test_bad_config_entries(entry, message):
    expect_config_error(message, [{**WIO8[0], **entry}], batches())


def test_a_layer_the_calibration_never_reaches():
    torch.manual_seed(0)
    model = KeywordNet()
    model.unused = nn.Linear(4, 4)  # not called by forward
    before = snapshot(model)
    with pytest.raises(ConfigError, match="layer 'unused': its input was never seen during calibration"):
        PtqQuantizer(model, [{"quant_types": ["input"], "quant_bits": 8, "op_types": ["Linear"]}], [torch.ones(1, 4)]).compress()
    assert_untouched(model, before)
