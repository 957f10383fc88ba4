"""Quantizing the input/output of modules without weight (NNI's QAT example: ReLU6 outputs)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from nncore.builtin_quantizers import LsqQuantizer, QAT_Quantizer
from nncore.builtin_quantizers.functional import affine_qparams, fake_quantize
from nncore.errors import ConfigError
from nncore.speedup.int8 import export_int8_onnx
from nncore.wrapper import QuantizerModuleWrapper
from tests.conftest import assert_untouched, snapshot

# NNI 1.9's QAT usage example, unchanged
NNI_QAT_CONFIG = [
    {"quant_types": ["weight"], "quant_bits": {"weight": 8}, "op_types": ["Conv2d", "Linear"]},
    {"quant_types": ["output"], "quant_bits": 8, "quant_start_step": 2, "op_types": ["ReLU6"]},
]
SHAPE = [1, 1, 8, 8]


class MobileBlockNet(nn.Module):
    """conv-bn-ReLU6, conv-bn-ReLU6, then the second ReLU6 called again on a residual sum; pool, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU6()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.act2 = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act1(self.bn1(self.conv1(x)))
        b = self.act2(self.bn2(self.conv2(a)))
        return self.fc(torch.flatten(self.pool(self.act2(a + b)), 1))


def trained_qat(config=NNI_QAT_CONFIG, batches: int = 4):
    torch.manual_seed(0)
    model = MobileBlockNet()
    quantizer = QAT_Quantizer(model, config, dummy_input=torch.randn(*SHAPE))
    quantizer.compress()
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    for _ in range(batches):
        optimizer.zero_grad()
        model(torch.randn(16, 1, 8, 8, generator=generator) * 3).pow(2).mean().backward()
        optimizer.step()
        quantizer.step()
    model.eval()
    return model, quantizer


def test_nni_qat_example_quantizes_relu6_outputs():
    model, quantizer = trained_qat()
    assert [c.name for c in quantizer.layer_configs] == ["conv1", "act1", "conv2", "act2", "fc"]
    wrapper = model.act1
    assert isinstance(wrapper, QuantizerModuleWrapper) and wrapper.bits == {"output": 8}
    low, high = wrapper.tracked_min_output, wrapper.tracked_max_output
    assert low.item() == 0.0 and 0.0 < high.item() <= 6.0
    x = torch.randn(2, 8, 4, 4) * 4
    scale, zero_point = affine_qparams(low, high, 8)
    assert torch.equal(wrapper(x), fake_quantize(torch.clamp(x, 0, 6), scale, zero_point, 0, 255))
    assert torch.unique(wrapper(x)).numel() <= 256


def test_weightless_outputs_wait_for_quant_start_step():
    model, quantizer = trained_qat(batches=1)  # 1 step < quant_start_step 2
    x = torch.randn(2, 8, 4, 4) * 4
    assert torch.equal(model.act1(x), torch.clamp(x, 0, 6))


def test_weightless_layers_export_their_ranges_and_keep_the_original_keys(tmp_path):
    torch.manual_seed(0)
    keys = set(MobileBlockNet().state_dict())
    model, quantizer = trained_qat()
    calibration = quantizer.export_model(str(tmp_path / "model.pth"), str(tmp_path / "calibration.pth"))
    assert calibration["act2"] == {"output_bits": 8, "tracked_min_output": 0.0,
                                   "tracked_max_output": pytest.approx(model.act2.tracked_max_output.item())}
    assert set(quantizer.clean_state_dict()) == keys
    assert isinstance(quantizer.inference_model().act1, nn.ReLU6)


def test_a_weight_on_a_weightless_module_is_a_config_error_naming_it():
    torch.manual_seed(0)
    model = MobileBlockNet()
    before = snapshot(model)
    with pytest.raises(ConfigError) as caught:
        QAT_Quantizer(model, [{"quant_types": ["weight", "output"], "quant_bits": 8, "op_types": ["ReLU6", "Linear"]}])
    assert caught.value.errors == [
        f"config_list[0]: cannot quantize the weight of {name!r} (ReLU6): it has no weight parameter; "
        "quantize its 'input' or 'output' instead" for name in ("act1", "act2")]
    assert_untouched(model, before)


def test_an_output_that_is_not_a_tensor_is_a_config_error():
    model = nn.Sequential(nn.LSTM(4, 4))
    quantizer = QAT_Quantizer(model, [{"quant_types": ["output"], "quant_bits": 8, "op_types": ["LSTM"]}])
    quantizer.compress()
    with pytest.raises(ConfigError, match=r"cannot quantize the output of '0' \(LSTM\): it is a tuple, not a tensor"):
        model(torch.randn(3, 1, 4))


def test_lsq_quantizes_weightless_inputs_too():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    quantizer = LsqQuantizer(model, [{"quant_types": ["input"], "quant_bits": 4, "op_types": ["ReLU"]}])
    quantizer.compress()
    model.train()
    model(torch.randn(8, 4))
    assert model[1].input_step.item() > 0


def int8_graph_and_run(model, calibration, path, tmp_path, x):
    export_int8_onnx(model, calibration, path, SHAPE)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    out = np.concatenate([session.run(None, {"input": sample[None].numpy()})[0] for sample in x])
    return onnx.load(str(path)).graph, {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}, out


def test_int8_export_carries_relu6_output_ranges(tmp_path):
    """NNI's example config: convs quantize weights only; the ReLU6 output ranges make conv2
    and the residual Add int8 (QLinearConv, QLinearAdd), and every Clip is fused away."""
    model, quantizer = trained_qat()
    calibration = quantizer.calibration_config()
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 3
    graph, ops, got = int8_graph_and_run(model, calibration, tmp_path / "int8.onnx", tmp_path, x)
    scales = {t.name: float(onnx.numpy_helper.to_array(t)) for t in graph.initializer if t.name.endswith("/scale")
              and t.data_type == onnx.TensorProto.FLOAT and not t.dims}
    act1_high = calibration["act1"]["tracked_max_output"]
    assert any(abs(value - act1_high / 255) < 1e-9 for value in scales.values())
    assert {"QLinearConv", "QLinearAdd"} <= ops  # conv2 reads act1's quantized output, writes act2's
    assert not any(n.op_type == "Clip" for n in graph.node)  # each Clip became its producer's quantized output
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(got - expected).max() <= 0.05 * (expected.max() - expected.min())


def test_int8_export_of_relu6_called_twice_quantizes_both_calls(tmp_path):
    config = [{"quant_types": ["weight", "input"], "quant_bits": 8, "op_types": ["Conv2d", "Linear"]},
              {"quant_types": ["output"], "quant_bits": 8, "op_types": ["ReLU6"]}]
    model, quantizer = trained_qat(config)
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(4)) * 3
    graph, ops, got = int8_graph_and_run(model, quantizer.calibration_config(), tmp_path / "int8.onnx", tmp_path, x)
    quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    assert {"/model/act2/Clip_output_0", "/model/act2_1/Clip_output_0"} <= quantized
    assert {"QLinearConv", "QLinearAdd", "QGemm"} <= ops and "Conv" not in ops
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(got - expected).max() <= 0.05 * (expected.max() - expected.min())
