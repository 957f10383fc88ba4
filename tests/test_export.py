"""export_model: clean state_dict, mask file, ONNX that onnxruntime runs, atomic writes."""
from __future__ import annotations

import pickle

import numpy as np
import onnx
import pytest
import torch

from nncore import artifacts
from nncore.artifacts import load_masks
from nncore.builtin_pruners import LevelPruner
from nncore.errors import ArtifactError, ConfigError, NncoreError
from tests.conftest import make_tiny_cnn

CONFIG = [{"sparsity": 0.6, "op_types": ["default"]}]


@pytest.fixture
def pruner(tiny_cnn):
    pruner = LevelPruner(tiny_cnn, CONFIG)
    pruner.compress()
    return pruner


def test_the_state_dict_has_the_original_keys_zeros_and_loads_into_a_fresh_model(pruner, tmp_path):
    pruner.export_model(tmp_path / "model.pth")
    state = torch.load(tmp_path / "model.pth", weights_only=True)
    fresh = make_tiny_cnn()
    assert list(state) == list(fresh.state_dict())
    fresh.load_state_dict(state, strict=True)
    for name, wrapper in pruner.wrappers.items():
        weight = state[f"{name}.weight"]
        assert (weight[wrapper.weight_mask == 0] == 0).all()
    x = torch.randn(3, 1, 6, 6)
    fresh.eval(), pruner.bound_model.eval()
    torch.testing.assert_close(fresh(x), pruner.bound_model(x))


def test_the_mask_file_maps_module_names_to_weight_and_bias_masks(pruner, tmp_path):
    pruner.export_model(tmp_path / "model.pth", mask_path=tmp_path / "mask.pth")
    masks = load_masks(tmp_path / "mask.pth")
    assert set(masks) == {"conv1", "conv2", "fc"}
    for name, entry in masks.items():
        assert set(entry) == {"weight", "bias"}
        assert torch.equal(entry["weight"], pruner.wrappers[name].weight_mask)
        assert torch.equal(entry["bias"], torch.ones_like(entry["bias"]))


def test_the_onnx_file_passes_the_checker_and_onnxruntime_reproduces_the_output(pruner, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "model.onnx"
    pruner.export_model(tmp_path / "model.pth", onnx_path=path, input_shape=[2, 1, 6, 6])
    onnx.checker.check_model(onnx.load(str(path)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 1, 6, 6)
    pruner.bound_model.eval()
    expected = pruner.bound_model(x).detach().numpy()
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_onnx_without_input_shape_is_refused_before_anything_is_written(pruner, tmp_path):
    with pytest.raises(ConfigError, match="onnx_path needs input_shape"):
        pruner.export_model(tmp_path / "model.pth", onnx_path=tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_export_before_compress_is_an_error(tiny_cnn, tmp_path):
    with pytest.raises(NncoreError, match="call compress\\(\\) first"):
        LevelPruner(tiny_cnn, CONFIG).export_model(tmp_path / "model.pth")


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(pruner, tmp_path, monkeypatch):
    target = tmp_path / "model.pth"
    target.write_bytes(b"old content")

    def interrupted(obj, handle):
        handle.write(b"half of a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(artifacts.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pruner.export_model(target)
    assert target.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]


def test_a_file_that_is_not_a_mask_file_is_an_artifact_error(tmp_path):
    torch.save({"conv1": torch.ones(3)}, tmp_path / "state.pth")
    with pytest.raises(ArtifactError, match=r"state.pth.*entry 'conv1' has no mask tensor"):
        load_masks(tmp_path / "state.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(ArtifactError, match=r"text.pth': not a mask file \(truncated / empty / not a torch file\)"):
        load_masks(tmp_path / "text.pth")
    with pytest.raises(ArtifactError, match="does not exist"):
        load_masks(tmp_path / "missing.pth")


class Payload:
    def __reduce__(self):
        return (exec, ("raise SystemExit('code ran')",))


def test_loading_never_executes_code_from_the_file(tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"conv1": {"weight": Payload()}}))
    with pytest.raises(ArtifactError, match="not a mask file"):  # a bare pickle is not a torch file
        load_masks(path)
    torch.save({"conv1": {"weight": Payload()}}, path)  # a torch file holding code: refused, never run
    with pytest.raises(ArtifactError, match="cannot be read safely: it holds Python objects other than tensors"):
        load_masks(path)
