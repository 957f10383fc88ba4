"""``nncore compress`` end to end on a reduced budget, its reports, cache and one-line errors."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from nncore.cli import main
from nncore.jobs.cost import compressed_cost, effective_flops_params
from nncore.jobs.pruning import make_pruner
from nncore.zoo import DigitsCNN

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NNCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def needs_speedup_model() -> nn.Module:
    """A model whose forward fails on 1x8x8 digits (expects 3 channels)."""
    return nn.Conv2d(3, 4, 3)


def tiny_data():
    """(x_train, y_train, x_test, y_test): 3 classes told apart by the mean of a 1x6x6 image."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    images = torch.rand(60, 1, 6, 6, generator=generator) * 0.2 + labels.view(-1, 1, 1, 1) * 0.4
    return images[:45], labels[:45], images[45:], labels[45:]


def broken_data():
    return "not data"


def test_default_job_end_to_end_quiet(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["compress", "--epochs", "1", "--finetune-epochs", "1", "--batch-size", "256", "--output", str(out),
                 "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    report = json.loads((out / "report.json").read_text())
    assert report["algo"] == "l1" and report["speedup"] is True
    # 16, 32 and 64 filters at sparsity 0.5 lose exactly half
    assert report["layer_sparsity"] == {"conv1": 0.5, "conv2": 0.5, "conv3": 0.5}
    # conv1 8*9*64 + conv2 16*8*9*64 + conv3 32*16*9*16 + fc 32*10 MACs
    assert report["compressed"]["flops"] == 4608 + 73728 + 73728 + 320
    assert report["baseline"]["flops"] == 9216 + 294912 + 294912 + 640
    assert report["compressed"]["params"] < report["baseline"]["params"]
    assert report["compressed"]["size_bytes"] < report["baseline"]["size_bytes"]
    for metrics in (report["baseline"], report["compressed"]):
        assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["latency_ms"] > 0
    shrunk = torch.load(out / "model_speedup.pt", weights_only=True)
    assert tuple(shrunk["conv1.weight"].shape) == (8, 1, 3, 3)
    masks = torch.load(out / "masks.pt", weights_only=True)
    assert int(masks["bn1"]["weight"].sum()) == 8
    markdown = (out / "report.md").read_text()
    assert "| accuracy (test) |" in markdown and "| conv2 | 50.00% |" in markdown
    assert (out / "sparsity.png").read_bytes()[:8] == PNG_MAGIC
    assert len(list((tmp_path / "cache").glob("baseline-*.pt"))) == 1

    # the same recipe again: the baseline comes from the cache, and the table is printed
    assert main(["compress", "--epochs", "1", "--finetune-epochs", "0", "--batch-size", "256",
                 "--output", str(tmp_path / "again")]) == 0
    captured = capsys.readouterr()
    assert "baseline: loaded from cache" in captured.err
    assert "accuracy (test)" in captured.out and "FLOPs (MACs)" in captured.out
    assert len(list((tmp_path / "cache").glob("baseline-*.pt"))) == 1


def test_user_model_data_config_and_sensitivity(tmp_path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps([{"sparsity": 0.5, "op_names": ["conv2"]}]))
    out = tmp_path / "out"
    status = main(["compress", "--model", "tests.conftest:make_tiny_cnn", "--data", "tests.jobs.test_compress:tiny_data",
                   "--config", str(config), "--epochs", "2", "--finetune-epochs", "1", "--sensitivity",
                   "--output", str(out), "--quiet"])
    assert status == 0
    report = json.loads((out / "report.json").read_text())
    assert report["layer_sparsity"] == {"conv2": 0.5}
    assert report["data"] == "tests.jobs.test_compress:tiny_data (tensors)"
    rows = (out / "sensitivity.csv").read_text().splitlines()
    assert rows[0] == "layername,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"
    assert [row.split(",")[0] for row in rows[1:]] == ["conv1", "conv2"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no_such_module:build"], "--model 'no_such_module:build': cannot import 'no_such_module'"),
        (["--model", "tests.jobs.test_compress:nothing"], "module 'tests.jobs.test_compress' has no attribute 'nothing'"),
        (["--model", "tests.jobs.test_compress:needs_speedup_model"], "forward on an input of shape (1, 1, 8, 8) failed"),
        (["--data", "tests.jobs.test_compress:broken_data"], "expected (train_loader, test_loader) or (x_train"),
        (["--algo", "nope"], "nope"),
        (["--sparsity", "1.5"], "--sparsity must be in [0, 1)"),
    ],
)
def test_broken_arguments_give_one_line_error(args, message, tmp_path, capsys) -> None:
    status = main(["compress", *args, "--epochs", "0", "--finetune-epochs", "0", "--output", str(tmp_path / "o")])
    assert status != 0
    err = capsys.readouterr().err
    assert err.startswith("nncore compress: error: ") and message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_cost_after_speedup_is_counted_exactly() -> None:
    torch.manual_seed(0)
    model = DigitsCNN()
    example = torch.zeros(1, 1, 8, 8)
    pruner = make_pruner("l1", model, [{"sparsity": 0.25, "op_names": ["conv1"]},
                                       {"sparsity": 0.75, "op_names": ["conv2", "conv3"]}], example)
    pruner.compress()
    masks = pruner.masks()
    pruner.unwrap_model()
    # 12, 8 and 16 channels kept: conv1 12*9*64, conv2 8*12*9*64, conv3 16*8*9*16, fc 16*10
    flops, params, exact = compressed_cost(model, masks, example)
    assert exact and flops == 6912 + 55296 + 18432 + 160


def test_estimate_without_speedup_counts_live_channels() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 8, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    example = torch.zeros(1, 1, 8, 8)
    pruner = make_pruner("l1", model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], example)
    pruner.compress()
    pruner.unwrap_model()
    # conv 2*1*9*64, conv 4*2*9*64, linear 4*3; params: 2*9, 4*2*9, 4*3 weights + 2+2 (BN) + 2+4+3 biases
    assert effective_flops_params(model, example) == (1152 + 4608 + 12, 18 + 72 + 12 + 4 + 9)


def test_quantize_qat_goes_on_to_an_int8_onnx_model(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "out"
    assert main(["compress", "--epochs", "1", "--finetune-epochs", "1", "--batch-size", "256", "--quantize", "qat",
                 "--output", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["notes"] == []
    assert set(report["int8"]) == {"accuracy", "latency_ms", "size_bytes"}
    assert 0.0 <= report["int8"]["accuracy"] <= 1.0
    assert "model_int8.onnx" in report["artifacts"] and "calibration.pt" in report["artifacts"]
    graph = onnx.load(str(out / "model_int8.onnx")).graph
    operators = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= operators
    calibration = torch.load(out / "calibration.pt", weights_only=True)
    assert {"conv1", "conv2", "conv3", "fc"} <= set(calibration)
    assert calibration["conv1"]["weight_bits"] == 8
    assert report["int8"]["size_bytes"] < report["compressed"]["size_bytes"]
