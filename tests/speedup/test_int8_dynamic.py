"""export_int8_onnx(mode="dynamic") and token inputs: Hugging Face BERT and Llama built from configs,
dynamic sequence lengths, models pruned by speedup or shrunk by hand, and a static int8 transformer."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from nncore.builtin_quantizers import PtqQuantizer
from nncore.errors import SpeedupError
from nncore.speedup import ModelSpeedup, find_attention_groups
from nncore.speedup.int8 import export_int8_onnx
from tests.speedup.hf_models import FFN, HIDDEN, VOCAB, bert, llama, mask_heads, mask_outputs, token_ids

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def session_and_ops(path, tmp_path):
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    return session, ops


def tokens(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_close(got: np.ndarray, expected: torch.Tensor, tolerance: float = 0.03) -> None:
    expected = expected.numpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= tolerance * np.abs(expected).max()


def int8_weights(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2}


def test_bert_dynamic_int8_runs_integer_matmuls_at_any_sequence_length(tmp_path):
    model = bert()
    path = export_int8_onnx(model, None, tmp_path / "bert.onnx", dummy_input=token_ids(), mode="dynamic")
    session, ops = session_and_ops(path, tmp_path)
    assert [i.name for i in session.get_inputs()] == ["input_ids"]
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state", "pooler_output"]
    # 2 layers x (q, k, v, o, ffn in, ffn out) + pooler = 13 Linear layers, all integer
    assert ops.count("DynamicQuantizeMatMul") + ops.count("MatMulIntegerToFloat") == 13
    assert ops.count("MatMul") + ops.count("FusedMatMul") == 4  # attention scores and context stay float
    weights = int8_weights(path)
    assert len(weights) == 13 and all(np.abs(w).max() <= 63 for w in weights.values())
    for batch, length in ((1, 6), (3, 11)):
        ids = tokens(batch, length, seed=length)
        with torch.no_grad():
            expected = model(input_ids=ids).last_hidden_state
        assert_close(session.run(["last_hidden_state"], {"input_ids": ids.numpy()})[0], expected)


def test_per_tensor_8_bit_weights_as_quantize_dynamic_writes_by_default(tmp_path):
    model = bert()
    path = export_int8_onnx(model, None, tmp_path / "bert.onnx", dummy_input=token_ids(), mode="dynamic",
                            per_channel=False, reduce_range=False)
    graph = onnx.load(str(path)).graph
    scales = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name.endswith("/weight_scale")}
    assert len(scales) == 13 and all(scale.shape == () for scale in scales.values())
    weights = int8_weights(path)
    # one scale per layer: the largest |w| of the whole layer maps to 127
    assert len(weights) == 13 and all(int(np.abs(w).max()) == 127 for w in weights.values())
    session, ops = session_and_ops(path, tmp_path)
    assert ops.count("DynamicQuantizeMatMul") + ops.count("MatMulIntegerToFloat") == 13
    ids = tokens(2, 9, seed=4)
    with torch.no_grad():
        expected = model(input_ids=ids).last_hidden_state
    assert_close(session.run(["last_hidden_state"], {"input_ids": ids.numpy()})[0], expected)


def test_llama_dynamic_int8_with_an_attention_mask(tmp_path):
    model = llama()
    ids = token_ids()["input_ids"]
    dummy = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    path = export_int8_onnx(model, None, tmp_path / "llama.onnx", dummy_input=dummy, mode="dynamic")
    session, ops = session_and_ops(path, tmp_path)
    assert [o.name for o in session.get_outputs()] == ["logits"]  # the cache is not a tensor: dropped
    assert ops.count("DynamicQuantizeMatMul") + ops.count("MatMulIntegerToFloat") == 2 * 7 + 1  # + lm_head
    ids = tokens(2, 9, seed=1)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy())})[0]
    assert_close(got, expected, tolerance=0.05)


def test_llama_without_attention_mask_says_how_to_export_it(tmp_path):
    with pytest.raises(SpeedupError, match=r"ONNX export of the model failed: .*pass|ONNX export of the model failed: .*attention_mask"):
        export_int8_onnx(llama(), None, tmp_path / "llama.onnx", dummy_input=token_ids(), mode="dynamic")
    assert not (tmp_path / "llama.onnx").exists()


def test_bert_pruned_by_speedup_then_quantized(tmp_path):
    model, inputs = bert(), token_ids()
    masks: dict = {}
    mask_heads(masks, model, find_attention_groups(model, inputs)[0], heads=[0, 2])
    mask_outputs(masks, model, "encoder.layer.1.intermediate.dense", slice(0, 20))
    ModelSpeedup(model, inputs, masks).speedup_model()
    assert model.encoder.layer[0].attention.self.query.weight.shape == (16, HIDDEN)
    assert model.encoder.layer[1].intermediate.dense.weight.shape == (FFN - 20, HIDDEN)
    path = export_int8_onnx(model, None, tmp_path / "pruned.onnx", dummy_input=inputs, mode="dynamic")
    shapes = sorted(w.shape for w in int8_weights(path).values())
    assert (HIDDEN, 16) in shapes and (HIDDEN, FFN - 20) in shapes and (FFN - 20, HIDDEN) in shapes
    session, _ = session_and_ops(path, tmp_path)
    ids = tokens(2, 7, seed=3)
    with torch.no_grad():
        expected = model(input_ids=ids).last_hidden_state
    assert_close(session.run(["last_hidden_state"], {"input_ids": ids.numpy()})[0], expected)


def test_bert_with_linear_layers_shrunk_by_hand(tmp_path):
    model = bert()
    ffn = model.encoder.layer[0]
    small_in, small_out = nn.Linear(HIDDEN, 8), nn.Linear(8, HIDDEN)
    with torch.no_grad():
        small_in.weight.copy_(ffn.intermediate.dense.weight[:8])
        small_in.bias.copy_(ffn.intermediate.dense.bias[:8])
        small_out.weight.copy_(ffn.output.dense.weight[:, :8])
        small_out.bias.copy_(ffn.output.dense.bias)
    ffn.intermediate.dense, ffn.output.dense = small_in, small_out
    path = export_int8_onnx(model, None, tmp_path / "small.onnx", dummy_input=token_ids(), mode="dynamic")
    assert {(HIDDEN, 8), (8, HIDDEN)} <= {w.shape for w in int8_weights(path).values()}
    session, _ = session_and_ops(path, tmp_path)
    ids = tokens(1, 5, seed=4)
    with torch.no_grad():
        expected = model(input_ids=ids).last_hidden_state
    assert_close(session.run(["last_hidden_state"], {"input_ids": ids.numpy()})[0], expected)


def test_a_calibration_limits_dynamic_int8_to_the_layers_it_quantizes(tmp_path):
    model = bert()
    calibration = {"encoder.layer.0.attention.self.query": {"weight_bits": 8},
                   "encoder.layer.1.output.dense": {"weight_bits": 8}, "pooler.activation": {"output_bits": 8,
                                                                                          "tracked_min_output": -1.0,
                                                                                          "tracked_max_output": 1.0}}
    path = export_int8_onnx(model, calibration, tmp_path / "two.onnx", dummy_input=token_ids(), mode="dynamic")
    _, ops = session_and_ops(path, tmp_path)
    assert ops.count("DynamicQuantizeMatMul") + ops.count("MatMulIntegerToFloat") == 2
    assert len(int8_weights(path)) == 2


class PatchTransformer(nn.Module):
    """A tiny vision transformer on 8x8 images: 4x4 patches, one pre-norm encoder layer, mean pooling."""

    def __init__(self, width: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(16, width)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.fc1, self.fc2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.head = nn.Linear(width, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        h = self.embed(x.unfold(2, 4, 4).unfold(3, 4, 4).reshape(batch, 4, 16))
        q, k, v = self.qkv(self.norm1(h)).reshape(batch, 4, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v
        h = h + self.proj(attention.transpose(1, 2).reshape(batch, 4, -1))
        h = h + self.fc2(torch.relu(self.fc1(self.norm2(h))))
        return self.head(h.mean(dim=1))


def test_static_int8_transformer_quantizes_linear_layers_on_3d_inputs(tmp_path):
    torch.manual_seed(0)
    model = PatchTransformer().eval()
    data = [torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    config = [{"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_types": ["Linear"]}]
    quantizer = PtqQuantizer(model, config, data)
    quantizer.compress()
    model.eval()
    fixed = export_int8_onnx(model, quantizer.calibration_config(), tmp_path / "fixed.onnx", [1, 1, 8, 8],
                             dynamic_axes={})
    session, ops = session_and_ops(fixed, tmp_path)
    weights = int8_weights(fixed)
    assert {f"{name}.weight/int8" for name in ("embed", "qkv", "proj", "fc1", "fc2", "head")} <= set(weights)
    assert ops.count("QGemm") == 6, ops  # each Linear (fused with its bias Add by ONNX Runtime) is integer
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected = model(x)
    got = np.concatenate([session.run(None, {"input": sample[None].numpy()})[0] for sample in x])
    assert_close(got, expected, tolerance=0.1)
    # the default export has a dynamic batch axis: the 3-D Linears stay integer (MatMulIntegerToFloat
    # where ONNX Runtime cannot fuse them into a Gemm without the batch size) and batch 6 runs at once
    dynamic = export_int8_onnx(model, quantizer.calibration_config(), tmp_path / "dynamic.onnx", [1, 1, 8, 8])
    session, ops = session_and_ops(dynamic, tmp_path)
    assert ops.count("QGemm") + ops.count("MatMulIntegerToFloat") + ops.count("QLinearMatMul") == 6, ops
    assert_close(session.run(None, {"input": x.numpy()})[0], expected, tolerance=0.1)
