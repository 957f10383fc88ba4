"""The quantizer wrapper, hook routing, step bookkeeping and export."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nncore import hookimpl
from nncore.artifacts import load_torch
from nncore.builtin_quantizers import NaiveQuantizer, QAT_Quantizer, QuantizerModuleWrapper
from nncore.errors import NncoreError

from tests.builtin_quantizers.helpers import make_convnet, run_training_batches

WIO8 = [{"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_types": ["default"]}]
CALIBRATION_KEYS = {"weight_bits", "weight_scale", "weight_zero_point", "min_weight", "max_weight", "input_bits",
                    "tracked_min_input", "tracked_max_input", "output_bits", "tracked_min_output", "tracked_max_output"}


def test_compress_wraps_layers_in_real_modules_and_keeps_the_float_weight_trainable():
    model = make_convnet()
    original = model.conv2
    float_weight = original.weight.detach().clone()
    QAT_Quantizer(model, WIO8).compress()
    assert isinstance(model.conv2, QuantizerModuleWrapper) and model.conv2.module is original
    assert isinstance(original.weight, nn.Parameter) and original.weight.requires_grad
    model(torch.randn(2, 1, 8, 8))
    assert torch.equal(original.weight, float_weight)
    names = {name for name, _ in model.conv2.named_buffers()}
    assert {"weight_scale", "weight_zero_point", "tracked_min_input", "tracked_max_input",
            "tracked_min_output", "tracked_max_output"} <= names


class ZeroWeight:
    """A user plugin that overrides one layer's weight quantization (firstresult routing)."""

    @hookimpl(tryfirst=True)
    def quantize_weight(self, wrapper, weight):
        return torch.zeros_like(weight) if wrapper.name == "fc" else None


def test_the_forward_computes_with_the_weight_the_hook_returns():
    model = make_convnet()
    quantizer = NaiveQuantizer(model, [{"op_types": ["Linear"]}], plugins=[ZeroWeight()])
    quantizer.compress()
    model.eval()
    out = model(torch.randn(3, 1, 8, 8))
    assert torch.equal(out, model.fc.module.bias.detach().expand(3, -1))


def test_weight_gradient_passes_straight_through_the_rounding():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(6, 4))
    quantizer = QAT_Quantizer(layer, [{"quant_types": ["weight"], "quant_bits": 4, "op_types": ["Linear"]}])
    quantizer.compress()
    x = torch.randn(5, 6)
    layer(x).pow(2).sum().backward()
    weight = layer[0].module.weight
    quantized, _ = layer[0].quantized_parameters()
    reference = quantized.clone().requires_grad_()
    F.linear(x, reference, layer[0].module.bias.detach()).pow(2).sum().backward()
    assert not torch.equal(quantized, weight.detach())
    assert torch.allclose(weight.grad, reference.grad)


def test_step_is_counted_and_driven_by_the_optimizer():
    model = make_convnet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    quantizer = QAT_Quantizer(model, WIO8, optimizer)
    quantizer.compress()
    for expected in (1, 2):
        optimizer.zero_grad()
        model(torch.randn(2, 1, 8, 8)).sum().backward()
        optimizer.step()
        assert quantizer.steps == expected
    quantizer.step()
    assert quantizer.steps == 3


def test_export_writes_quantized_weights_under_the_original_keys_calibration_and_onnx(tmp_path):
    model = make_convnet()
    original_keys = set(model.state_dict())
    quantizer = QAT_Quantizer(model, WIO8, dummy_input=torch.randn(1, 1, 8, 8))
    quantizer.compress()
    run_training_batches(model, quantizer)
    paths = {kind: tmp_path / f"model.{kind}" for kind in ("pth", "calib", "onnx")}
    calibration = quantizer.export_model(str(paths["pth"]), str(paths["calib"]), str(paths["onnx"]), [1, 1, 8, 8])

    state = load_torch(paths["pth"], "model")
    assert set(state) == original_keys
    fresh = make_convnet(seed=5)
    fresh.load_state_dict(state)
    x = torch.randn(4, 1, 8, 8)
    model.eval(), fresh.eval()
    for name in ("conv2", "fc"):  # the exported weights are the quantized ones
        weight, _ = model.get_submodule(name).quantized_parameters()
        if name == "conv2":  # BatchNorm folded during QAT: exported unfolded, bn2 kept
            factor = fresh.bn2.weight / torch.sqrt(fresh.bn2.running_var + fresh.bn2.eps)
            weight = weight / factor.reshape(-1, 1, 1, 1)
        assert torch.allclose(fresh.get_submodule(name).weight, weight)

    assert load_torch(paths["calib"], "calibration").keys() == calibration.keys() == {"conv1", "conv2", "conv3", "fc"}
    assert set(calibration["conv3"]) == CALIBRATION_KEYS
    assert calibration["conv2"]["folded_batchnorm"] == "bn2"
    assert calibration["conv3"]["tracked_min_input"] == pytest.approx(float(model.conv3.tracked_min_input))
    assert calibration["fc"]["weight_bits"] == 8 and calibration["fc"]["weight_scale"].shape == (1,)

    session = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"input": x[:1].numpy()})[0]
    np.testing.assert_allclose(onnx_out, model(x[:1]).detach().numpy(), atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.calib", "model.onnx", "model.pth"]


def test_a_failed_export_writes_nothing(tmp_path):
    model = make_convnet()
    quantizer = NaiveQuantizer(model, [{"op_types": ["default"]}])
    with pytest.raises(NncoreError, match="call compress\\(\\) first"):
        quantizer.export_model(str(tmp_path / "m.pth"))
    quantizer.compress()
    with pytest.raises(NncoreError, match="onnx_path needs input_shape"):
        quantizer.export_model(str(tmp_path / "m.pth"), onnx_path=str(tmp_path / "m.onnx"))
    assert list(tmp_path.iterdir()) == []


def test_unwrap_restores_the_original_modules_and_folded_batchnorms():
    model = make_convnet()
    conv2, bn2 = model.conv2, model.bn2
    quantizer = QAT_Quantizer(model, WIO8, dummy_input=torch.randn(1, 1, 8, 8))
    quantizer.compress()
    assert isinstance(model.bn2, nn.Identity) and model.conv2.bn is bn2
    quantizer.unwrap_model()
    assert model.conv2 is conv2 and model.bn2 is bn2
