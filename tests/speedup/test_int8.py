"""export_int8_onnx: the quantizer's calibration becomes an int8 ONNX model ONNX Runtime runs with integer kernels."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from nncore.artifacts import save_torch
from nncore.builtin_quantizers import QAT_Quantizer
from nncore.errors import ArtifactError, ConfigError, SpeedupError
from nncore.speedup.int8 import export_float_onnx, export_int8_onnx, load_calibration

from tests.builtin_quantizers.helpers import make_convnet, run_training_batches

WIO8 = [{"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_types": ["default"]}]
SHAPE = [1, 1, 8, 8]


def qat_model(fold: bool = True, batches: int = 4):
    model = make_convnet()
    quantizer = QAT_Quantizer(model, WIO8, dummy_input=torch.randn(*SHAPE) if fold else None)
    quantizer.compress()
    run_training_batches(model, quantizer, batches=batches)
    model.eval()
    return model, quantizer


def optimized_ops(path, tmp_path) -> set[str]:
    """The op types ONNX Runtime actually runs (its optimized graph)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return {node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node}


def run(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": sample[None].numpy()})[0] for sample in x])


@pytest.mark.parametrize("fold", [True, False], ids=["bn-folded-in-qat", "bn-folded-at-export"])
def test_int8_model_runs_integer_kernels_and_matches_the_fake_quantized_model(fold, tmp_path):
    model, quantizer = qat_model(fold)
    path = export_int8_onnx(model, quantizer.calibration_config(), tmp_path / "int8.onnx", SHAPE)
    assert path == tmp_path / "int8.onnx"
    graph = onnx.load(str(path)).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name.endswith(".weight/int8")}
    assert set(weights) == {"conv1.weight/int8", "conv2.weight/int8", "conv3.weight/int8", "fc.weight/int8"}
    assert all(w.dtype == np.int8 and np.abs(w).max() <= 63 for w in weights.values())
    assert not any(t.data_type == onnx.TensorProto.FLOAT and t.name.endswith(".weight") for t in graph.initializer)
    assert {"QLinearConv", "QLinearAdd", "QGemm"} <= optimized_ops(path, tmp_path)
    assert "Conv" not in optimized_ops(path, tmp_path)

    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x).numpy()
    got = run(path, x)
    # one output quantization step of the fake-quantized model is ~1/255 of its range
    assert np.abs(got - expected).max() <= 0.05 * (expected.max() - expected.min())
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.85


def test_a_plain_model_and_a_calibration_file_give_the_same_int8_model(tmp_path):
    model, quantizer = qat_model()
    save_torch(quantizer.calibration_config(), tmp_path / "calibration.pth")
    plain = quantizer.inference_model()
    from_plain = export_int8_onnx(plain, tmp_path / "calibration.pth", tmp_path / "plain.onnx", SHAPE)
    from_wrapped = export_int8_onnx(model, quantizer.calibration_config(), tmp_path / "wrapped.onnx", SHAPE)
    x = torch.randn(4, 1, 8, 8)
    np.testing.assert_allclose(run(from_plain, x), run(from_wrapped, x), atol=1e-6)


def test_bad_calibrations_are_refused_without_writing(tmp_path):
    model, quantizer = qat_model(batches=1)
    with pytest.raises(ConfigError, match="calibration names layers the model does not have: nope"):
        export_int8_onnx(model, {"nope": {"weight_bits": 8}}, tmp_path / "x.onnx", SHAPE)
    with pytest.raises(ArtifactError, match="has input_bits but no tracked_min/max_input"):
        load_calibration({"conv1": {"input_bits": 8}})
    with pytest.raises(ArtifactError, match="does not exist"):
        load_calibration(tmp_path / "missing.pth")
    save_torch([1, 2], tmp_path / "list.pth")
    with pytest.raises(ArtifactError, match="not a calibration config"):
        load_calibration(tmp_path / "list.pth")
    assert not (tmp_path / "x.onnx").exists()


def test_prune_speed_up_quantize_and_run_int8_end_to_end(tmp_path):
    """L1 filter pruning -> ModelSpeedup -> QAT -> int8 ONNX -> ONNX Runtime vs. the fake-quantized model."""
    import nncore
    from nncore.speedup import ModelSpeedup

    model = make_convnet()
    pruner = nncore.get_compressor("l1")(model, [{"sparsity": 0.5, "op_names": ["conv3"]}])
    pruner.compress()
    masks = pruner.masks()
    pruner.unwrap_model()
    ModelSpeedup(model, torch.randn(*SHAPE), masks).speedup_model()
    assert (model.conv3.out_channels, model.fc.in_features) == (16, 16)  # really smaller

    quantizer = QAT_Quantizer(model, WIO8, dummy_input=torch.randn(*SHAPE))
    quantizer.compress()
    run_training_batches(model, quantizer, batches=4)
    model.eval()
    calibration = quantizer.export_model(str(tmp_path / "model.pth"), str(tmp_path / "calibration.pth"))
    path = export_int8_onnx(quantizer.inference_model(), tmp_path / "calibration.pth", tmp_path / "int8.onnx", SHAPE)

    assert set(calibration) == {"conv1", "conv2", "conv3", "fc"}
    assert "QLinearConv" in optimized_ops(path, tmp_path)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(x).numpy()
    got = run(path, x)
    assert np.abs(got - expected).max() <= 0.05 * (expected.max() - expected.min())
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.85


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mode": "fast"}, "mode: 'fast' is not 'static' or 'dynamic'"),
    ({"calibration": None}, "mode='static' needs the calibration config of a quantizer"),
    ({"input_shape": None}, "give input_shape (a float input of that shape) or dummy_input (the model's inputs), exactly one"),
    ({"dummy_input": torch.randn(*SHAPE)}, "give input_shape (a float input of that shape) or dummy_input"),
    ({"input_shape": [1, 3, 8, 8]}, "the model cannot be run on the example input (input: [1, 3, 8, 8] float32): RuntimeError"),
    ({"input_shape": [1, 0, 8]}, "input_shape must be a list of positive ints, got [1, 0, 8]"),
    ({"input_shape": None, "dummy_input": "x"}, "dummy_input must be a tensor, a tuple/list of tensors or a dict"),
    ({"dynamic_axes": {"pixels": [0]}}, "dynamic_axes names inputs that dummy_input does not have: pixels (inputs: input)"),
    ({"per_channel": False}, "per_channel=False applies to mode='dynamic' only"),
])
def test_bad_arguments_are_config_errors_and_write_nothing(kwargs, message, tmp_path):
    model, quantizer = qat_model(batches=1)
    target = tmp_path / "int8.onnx"
    target.write_bytes(b"previous content")
    arguments = {"model": model, "calibration": quantizer.calibration_config(), "onnx_path": target,
                 "input_shape": SHAPE, **kwargs}
    with pytest.raises(ConfigError) as caught:
        export_int8_onnx(**arguments)
    assert any(error.startswith(message) for error in caught.value.errors), caught.value.errors
    assert target.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"]  # no temporary file left


def test_a_failing_export_leaves_no_file(tmp_path):
    class Unexportable(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.eigvals(x).real  # no ONNX symbolic

    with pytest.raises(SpeedupError, match="ONNX export of the model failed"):
        export_int8_onnx(Unexportable(), None, tmp_path / "x.onnx", [2, 2], mode="dynamic")
    assert list(tmp_path.iterdir()) == []


def test_the_float_export_is_the_graph_int8_starts_from(tmp_path):
    model, quantizer = qat_model()
    path = export_float_onnx(model, tmp_path / "float.onnx", SHAPE)
    graph = onnx.load(str(path)).graph
    assert {n.op_type for n in graph.node} >= {"Conv", "Gemm"} and "BatchNormalization" not in {n.op_type for n in graph.node}
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        expected = quantizer.inference_model().eval()(x).numpy()
    np.testing.assert_allclose(run(path, x), expected, atol=1e-5)


class SameNames(torch.nn.Module):
    """Layers with the same last name in a ModuleList of ModuleDicts, and a module called twice per block."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            torch.nn.ModuleDict({"fc": torch.nn.Linear(4, 4), "act": torch.nn.ReLU6()}) for _ in range(2))
        self.relu = torch.nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = self.relu(block["act"](block["fc"](x))) + self.relu(x)
        return x


def test_node_scopes_name_the_module_of_each_call_even_when_names_repeat():
    from nncore.speedup.int8 import ExampleInputs, _onnx_bytes

    model = SameNames().eval()
    data, scopes = _onnx_bytes(model, ExampleInputs([2, 4], None, None, torch.device("cpu")))
    assert {scope: name for scope, name in scopes.modules.items() if name} == {
        "/model/fc": "blocks.0.fc", "/model/act": "blocks.0.act", "/model/relu": "relu", "/model/relu_1": "relu",
        "/model/fc_1": "blocks.1.fc", "/model/act_1": "blocks.1.act", "/model/relu_2": "relu", "/model/relu_3": "relu"}
    graph = onnx.load_from_string(data).graph
    gemms = {scopes.node_module(node) for node in graph.node if node.op_type == "Gemm"}
    assert gemms == {"blocks.0.fc", "blocks.1.fc"}
