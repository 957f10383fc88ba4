"""Accuracy on the digits data set after compression (slow: run with ``pytest -m slow``)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from nncore.builtin_pruners import L1FilterPruner, LevelPruner
from nncore.builtin_quantizers import QAT_Quantizer
from nncore.data import accuracy, digits_data, train_epochs
from nncore.zoo import DigitsCNN

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    data = digits_data(batch_size=32, seed=0)
    model = DigitsCNN()
    train_epochs(model, data.train_loader, 20, lr=3e-3, verbose=False)
    return model, data, accuracy(model, data.test_loader)


def test_dense_model_learns_digits(trained):
    _, _, dense = trained
    assert dense >= 0.97


def test_l1_filter_pruning_at_half_the_filters_stays_within_1_5_points(trained):
    dense_model, data, dense = trained
    model = copy.deepcopy(dense_model)
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}],
                            dependency_aware=True, dummy_input=torch.zeros(1, 1, 8, 8))
    pruner.compress()
    train_epochs(model, data.train_loader, 10, lr=3e-3, verbose=False)
    assert accuracy(model, data.test_loader) >= dense - 0.015


def test_level_pruning_at_80_percent_stays_within_1_point(trained):
    dense_model, data, dense = trained
    model = copy.deepcopy(dense_model)
    LevelPruner(model, [{"sparsity": 0.8, "op_types": ["default"]}]).compress()
    train_epochs(model, data.train_loader, 10, lr=3e-3, verbose=False)
    assert accuracy(model, data.test_loader) >= dense - 0.01


def test_qat_8_bit_within_half_a_point_and_int8_onnx_matches_it(trained, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from nncore.speedup import export_int8_onnx

    dense_model, data, dense = trained
    model = copy.deepcopy(dense_model)
    config = [{"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_types": ["Conv2d", "Linear"]}]
    quantizer = QAT_Quantizer(model, config)
    quantizer.compress()
    train_epochs(model, data.train_loader, 5, lr=1e-3, on_step=quantizer.step, verbose=False)
    fake_quantized = accuracy(model, data.test_loader)
    assert fake_quantized >= dense - 0.005
    calibration = quantizer.export_model(str(tmp_path / "model.pth"), str(tmp_path / "calibration.pth"))
    path = export_int8_onnx(model, calibration, tmp_path / "int8.onnx", [1, 1, 8, 8])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    correct = count = 0
    for inputs, labels in data.test_loader:
        for x, y in zip(inputs, labels):
            (logits,) = session.run(None, {name: x[None].numpy()})
            correct += int(np.argmax(logits) == int(y))
            count += 1
    assert abs(correct / count - fake_quantized) <= 0.005
