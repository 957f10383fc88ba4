"""``nncore compress`` end to end on a reduced budget: every registered pruner, reports, plots,
the output folder, the cache, and one-line errors before any training."""
from __future__ import annotations

import json
import os
import stat
import types
from typing import Any, ClassVar, Mapping

import pytest
import torch
import torch.nn as nn

import nncore
from nncore.cli import main
from nncore.compressor import Pruner
from nncore.jobs import compress, measure
from nncore.jobs.cost import compressed_cost, effective_flops_params
from nncore.cli import CommandLineError
from nncore.data import data_from_callable
from nncore.jobs.output import files_in
from nncore.jobs.pruning import check_construction, check_pruner, make_pruner
from nncore.jobs.supplies import JobSupplies, job_config_list
from nncore.registry import default_registry
from nncore.speedup import load_pruned
from nncore.zoo import DigitsCNN
from tests.conftest import make_tiny_cnn

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--model", "tests.conftest:make_tiny_cnn", "--data", "tests.jobs.test_compress:tiny_data",
        "--epochs", "1", "--finetune-epochs", "1", "--batch-size", "256"]
UNSTRUCTURED_NOTE = ("speedup removed no weight (the pruning is not structured): no model_speedup.pt, "
                     "model_pruned.pt is the compressed model")
PRUNERS = sorted(info.name for info in nncore.list_compressors() if info.kind == "pruner")


@pytest.fixture(autouse=True)
def private_cache_and_quick_latency(tmp_path, monkeypatch):
    monkeypatch.setenv("NNCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(measure, "LATENCY_ROUNDS", 5)
    monkeypatch.setattr(measure, "LATENCY_SECONDS", 0.0)
    monkeypatch.setattr(measure, "BATCH_LATENCY_ROUNDS", 2)


def needs_speedup_model() -> nn.Module:
    """A model whose forward fails on 1x8x8 digits (expects 3 channels)."""
    return nn.Conv2d(3, 4, 3)


def tiny_data():
    """(x_train, y_train, x_test, y_test): 3 classes told apart by the mean of a 1x8x8 image."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    images = torch.rand(60, 1, 8, 8, generator=generator) * 0.2 + labels.view(-1, 1, 1, 1) * 0.4
    return images[:45], labels[:45], images[45:], labels[45:]


def broken_data():
    return "not data"


def run_job(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(["compress", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def report_of(folder) -> dict[str, Any]:
    return json.loads((folder / "report.json").read_text())


def test_default_job_end_to_end_quiet(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    status, stdout, stderr = run_job(capsys, "--epochs", "1", "--finetune-epochs", "1", "--batch-size", "256",
                                     "--output", str(out), "--quiet")
    assert status == 0 and stdout == "" and stderr == ""
    report = report_of(out)
    assert report["algo"] == "l1" and report["speedup"] is True
    # 16, 32 and 64 filters at sparsity 0.5 lose exactly half
    assert report["layer_sparsity"] == {"conv1": 0.5, "conv2": 0.5, "conv3": 0.5}
    # after speedup conv2 keeps 16 of 32 filters over 8 of 16 input channels: 75% of its weights are gone;
    # every BatchNorm loses half its channels, fc half its inputs
    assert report["weight_reduction"] == {
        "conv1": {"removed": 0.5, "zero": 0.0}, "bn1": {"removed": 0.5, "zero": 0.0},
        "conv2": {"removed": 0.75, "zero": 0.0}, "bn2": {"removed": 0.5, "zero": 0.0},
        "conv3": {"removed": 0.75, "zero": 0.0}, "bn3": {"removed": 0.5, "zero": 0.0},
        "fc": {"removed": 0.5, "zero": 0.0}}
    # conv1 8*9*64 + conv2 16*8*9*64 + conv3 32*16*9*16 + fc 32*10 MACs
    assert report["compressed"]["flops"] == 4608 + 73728 + 73728 + 320
    assert report["baseline"]["flops"] == 9216 + 294912 + 294912 + 640
    assert report["compressed"]["params"] < report["baseline"]["params"]
    assert report["compressed"]["size_bytes"] < report["baseline"]["size_bytes"]
    for metrics in (report["baseline"], report["compressed"]):
        assert 0.0 <= metrics["accuracy"] <= 1.0
        low, high = metrics["latency_iqr_ms"]
        assert 0 < low <= metrics["latency_ms"] <= high and metrics["latency_runs"] == 5
        assert metrics["batch_latency_runs"] == 2
    # model_speedup.pt rebuilds the small model from a fresh DigitsCNN; it computes what the pruned one does
    shrunk = load_pruned(DigitsCNN(), out / "model_speedup.pt").eval()
    assert tuple(shrunk.conv1.weight.shape) == (8, 1, 3, 3) and tuple(shrunk.conv2.weight.shape) == (16, 8, 3, 3)
    pruned = DigitsCNN()
    pruned.load_state_dict(torch.load(out / "model_pruned.pt", weights_only=True))
    inputs = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(shrunk(inputs), pruned.eval()(inputs), rtol=1e-4, atol=1e-5)
    masks = torch.load(out / "masks.pt", weights_only=True)
    assert int(masks["bn1"]["weight"].sum()) == 8
    markdown = (out / "report.md").read_text()
    assert "| accuracy (test) |" in markdown and "| conv2 | 50.00% | 75.00% | 0.00% |" in markdown
    assert "interleaved" in markdown
    for picture in ("sparsity.png", "comparison.png"):
        assert (out / picture).read_bytes()[:8] == PNG_MAGIC
    # report.json lists exactly the files there, written with the usual permissions
    assert sorted(report["artifacts"]) == sorted(p.name for p in out.iterdir())
    umask = os.umask(0o022)
    os.umask(umask)
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o666 & ~umask}
    assert len(list((tmp_path / "cache").glob("baseline-*.pt"))) == 1

    # the same recipe again: the baseline comes from the cache, and the table is printed
    status, stdout, stderr = run_job(capsys, "--epochs", "1", "--finetune-epochs", "0", "--batch-size", "256",
                                     "--output", str(tmp_path / "again"))
    assert status == 0
    assert stderr.splitlines()[0] == (f"nncore compress: l1 pruning (sparsity 0.5) of DigitsCNN on digits, "
                                      f"results in {tmp_path / 'again'}/")
    assert "baseline: loaded from cache" in stderr
    assert "accuracy (test)" in stdout and "FLOPs (MACs)" in stdout and "± " in stdout
    assert "weights removed per layer: conv1 50%, bn1 50%, conv2 75%" in stdout
    assert len(list((tmp_path / "cache").glob("baseline-*.pt"))) == 1


class TinyStream(nn.Module):
    """A transformer-like residual stream on 1x8x8 inputs: four 4x4 patches -> width 8 -> LayerNorms."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 8)
        self.norm1 = nn.LayerNorm(8)
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 8)
        self.norm2 = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.unfold(2, 4, 4).unfold(3, 4, 4).reshape(x.shape[0], 4, 16))
        h = h + self.down(torch.relu(self.up(self.norm1(h))))
        return self.head(self.norm2(h).mean(dim=1))


class TinyAttention(nn.Module):
    """Four 4x4 patches -> width 8 -> one self-attention layer (2 heads of 4) -> 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 8)
        self.q, self.k, self.v, self.o = (nn.Linear(8, 8) for _ in range(4))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.unfold(2, 4, 4).unfold(3, 4, 4).reshape(x.shape[0], 4, 16))
        n, t, _ = h.shape
        q, k, v = (proj(h).view(n, t, 2, -1).transpose(1, 2) for proj in (self.q, self.k, self.v))
        attended = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, -1)
        return self.head((h + self.o(attended)).mean(dim=1))


def make_tiny_stream() -> nn.Module:
    torch.manual_seed(0)
    return TinyStream()


def make_tiny_attention() -> nn.Module:
    torch.manual_seed(0)
    return TinyAttention()


class WideCNN(nn.Module):
    """Two convolutions of 16 and 32 filters: enough channels for pruners that round to multiples of 8."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def make_wide_cnn() -> nn.Module:
    torch.manual_seed(0)
    return WideCNN()


TEST_MODELS = {"tests.conftest:make_tiny_cnn": make_tiny_cnn, "tests.jobs.test_compress:make_wide_cnn": make_wide_cnn,
               "tests.jobs.test_compress:make_tiny_stream": make_tiny_stream,
               "tests.jobs.test_compress:make_tiny_attention": make_tiny_attention}


def first_model_it_prunes(algo: str, output) -> str:
    """The first test model the job accepts for ``algo`` (the tiny CNN for most pruners)."""
    cls = nncore.get_compressor(algo)
    data = data_from_callable(tiny_data, "tiny", batch_size=256)
    config_list = job_config_list(cls, 0.5, 1)
    for spec, make in TEST_MODELS.items():
        model = make()
        try:
            check_pruner(algo, model, config_list, sparsity=0.5)
            check_construction(algo, model, config_list, lambda probe: JobSupplies(
                probe, data, lr=1e-3, output=output, seed=0, verbose=False, sparsity=0.5, finetune_epochs=1))
        except CommandLineError:
            continue
        return spec
    raise AssertionError(f"no test model fits {algo}: add one to TEST_MODELS")


@pytest.mark.parametrize("algo", PRUNERS)
def test_every_registered_pruner_runs_from_the_job(algo, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(compress, "write_plots", lambda report, output, notes: None)  # drawing is tested above
    model = first_model_it_prunes(algo, tmp_path / "probe")
    if model != "tests.conftest:make_tiny_cnn":  # it says, in one line, why it cannot prune the CNN
        status, _, stderr = run_job(capsys, *TINY, "--algo", algo, "--output", str(tmp_path / "cnn"), "--quiet")
        assert status == 2 and stderr.startswith(f"nncore compress: error: --algo {algo!r} cannot prune TinyCNN")
        assert stderr.count("\n") == 1
    out = tmp_path / algo
    status, stdout, stderr = run_job(capsys, *TINY, "--model", model, "--algo", algo, "--output", str(out), "--quiet")
    assert (status, stdout, stderr) == (0, "", "")
    report = report_of(out)
    assert report["speedup"] is True
    if all(reduction["removed"] == 0 for reduction in report["weight_reduction"].values()):  # unstructured
        assert report["notes"] == [UNSTRUCTURED_NOTE] and "model_speedup.pt" not in report["artifacts"]
    else:
        assert report["notes"] == [] and "model_speedup.pt" in report["artifacts"]
    assert any(report["layer_sparsity"].values()), f"{algo} pruned no layer"
    if "sparsity" in nncore.get_compressor(algo).job_config.values():
        # each layer reaches the target, up to rounding to whole filters / channels
        assert all(0.4 <= value <= 0.6 for value in report["layer_sparsity"].values()), report["layer_sparsity"]
    assert sorted(report["artifacts"]) == sorted(files_in(out))


def test_agp_gets_a_schedule_and_lottery_its_rounds(tmp_path, capsys) -> None:
    run_job(capsys, *TINY, "--algo", "agp", "--finetune-epochs", "6", "--output", str(tmp_path / "agp"), "--quiet")
    # pruned over the first half of the fine-tuning (end_epoch 3), then fine-tuned at the final sparsity
    assert report_of(tmp_path / "agp")["config_list"] == [
        {"final_sparsity": 0.5, "end_epoch": 3, "op_types": ["default"]}]
    run_job(capsys, *TINY, "--algo", "lottery", "--output", str(tmp_path / "lottery"), "--quiet")
    assert report_of(tmp_path / "lottery")["config_list"] == [
        {"sparsity": 0.5, "prune_iterations": 3, "op_types": ["default"]}]


class RecordingPruner(Pruner):
    """A third-party pruner that asks the job for a trainer, an evaluator and a number of rounds."""

    name: ClassVar[str] = "recording"
    config_schema: ClassVar[dict[str, Any]] = {"properties": {"sparsity": {"type": "number"}}, "required": ["sparsity"]}
    job_arguments: ClassVar[Mapping[str, str]] = {"train_one": "trainer", "score": "evaluator",
                                                  "iterations": "pruning_rounds"}
    seen: ClassVar[dict[str, Any]] = {}

    def __init__(self, model, config_list, train_one, score, iterations, *, plugins=()):
        super().__init__(model, config_list, plugins=plugins)
        self.train_one, self.score, self.iterations = train_one, score, iterations

    def after_wrap(self) -> None:
        optimizer = torch.optim.SGD(self.bound_model.parameters(), lr=0.0)
        RecordingPruner.seen.update(iterations=self.iterations, score=self.score(self.bound_model),
                                    loss=self.train_one(self.bound_model, optimizer, None, 0, None))

    @nncore.hookimpl
    def calc_mask(self, wrapper, sparsity):
        weight = wrapper.module.weight.detach()
        return {"weight_mask": (weight.abs() >= weight.abs().flatten().median()).float(), "bias_mask": None}


class NeedyPruner(Pruner):
    """Needs a constructor argument it does not ask the job for."""

    name: ClassVar[str] = "needy"

    def __init__(self, model, config_list, teacher, *, plugins=()):
        super().__init__(model, config_list, plugins=plugins)


class TypoPruner(Pruner):
    name: ClassVar[str] = "typo"
    job_arguments: ClassVar[Mapping[str, str]] = {"trainer": "trainr"}


class AttentionOnlyPruner(Pruner):
    """Prunes attention only: cannot run on a CNN."""

    name: ClassVar[str] = "attention_only"
    default_op_types: ClassVar[tuple[str, ...]] = ("MultiheadAttention",)
    config_schema: ClassVar[dict[str, Any]] = {"properties": {"sparsity": {"type": "number"}}}


@pytest.fixture
def third_party_pruners(fresh_registry):
    module = types.ModuleType("third_party")

    @nncore.hookimpl
    def register_compressors():
        return [RecordingPruner, NeedyPruner, TypoPruner, AttentionOnlyPruner]

    module.register_compressors = register_compressors
    default_registry().add_plugin(module, "third_party", "tests")


def test_a_third_party_pruner_gets_what_it_declares(third_party_pruners, tmp_path, capsys) -> None:
    RecordingPruner.seen.clear()
    status, _, stderr = run_job(capsys, *TINY, "--algo", "recording", "--output", str(tmp_path / "o"), "--quiet")
    assert status == 0, stderr
    assert RecordingPruner.seen["iterations"] == 3
    assert 0.0 <= RecordingPruner.seen["score"] <= 1.0
    assert RecordingPruner.seen["loss"] > 0  # one epoch of the training data went through the trainer


@pytest.mark.parametrize(("algo", "message"), [
    ("needy", "--algo 'needy': NeedyPruner needs 'teacher', which it does not ask a job for (declare them in "
              "its job_arguments; see nncore.jobs.supplies)"),
    ("typo", "--algo 'typo': TypoPruner asks a job for 'trainr', which a job does not supply (it supplies "
             "dummy_input, dependency_aware, optimizer,"),
    ("attention_only", "--algo 'attention_only' cannot prune TinyCNN at --sparsity 0.5: config_list[0]: selects "
                       "no module (op_types=['default'], op_names=None); module types in the model:"),
])
def test_a_pruner_the_job_cannot_run_is_one_line(third_party_pruners, no_training, algo, message, tmp_path,
                                                  capsys) -> None:
    status, _, stderr = run_job(capsys, *TINY, "--algo", algo, "--output", str(tmp_path / "o"))
    assert status == 2
    lines = stderr.splitlines()
    assert lines[0].startswith(f"nncore compress: {algo} pruning")
    assert lines[-1].startswith(f"nncore compress: error: {message}")
    assert len(lines) == 2 and "Traceback" not in stderr  # the status line, then the error


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no_such_module:build"], "--model 'no_such_module:build': cannot import 'no_such_module'"),
        (["--model", "tests.jobs.test_compress:nothing"], "module 'tests.jobs.test_compress' has no attribute 'nothing'"),
        (["--model", "tests.jobs.test_compress:needs_speedup_model"], "forward on an input of shape (1, 1, 8, 8) failed"),
        (["--data", "tests.jobs.test_compress:broken_data"], "expected (train_loader, test_loader) or (x_train"),
        (["--algo", "nope"], "nope"),
        (["--algo", "qat"], "--algo 'qat' is a quantizer, not a pruner (quantize with --quantize)"),
        (["--sparsity", "1.5"], "--algo 'l1' cannot prune DigitsCNN at --sparsity 1.5: config_list[0].sparsity: "
                                "1.5 is greater than the maximum of 1"),
        (["--sparsity", "-0.1"], "config_list[0].sparsity: -0.1 is less than the minimum of 0"),
        (["--epochs", "-1"], "--epochs must be >= 0, got -1"),
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
        (["--lr", "0"], "--lr must be > 0, got 0.0"),
        (["--config", "."], "config file '.' is a directory, not a file"),
        (["--config", "missing.json"], "config file 'missing.json' does not exist"),
        (["--output", "a_file"], "--output 'a_file' is a file, not a folder"),
    ],
)
def test_broken_arguments_give_one_line_error_before_any_training(args, message, tmp_path, capsys,
                                                                   no_training) -> None:
    (tmp_path / "a_file").write_text("mine")
    status, _, stderr = run_job(capsys, "--no-cache", "--output", str(tmp_path / "o"), *args)  # the last --output wins
    assert status == 2
    last = stderr.splitlines()[-1]
    assert last.startswith("nncore compress: error: ") and message in last
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 2
    assert (tmp_path / "a_file").read_text() == "mine"


def test_a_bad_config_file_lists_its_problems_before_any_training(tmp_path, capsys, no_training) -> None:
    config = tmp_path / "bad.json"
    config.write_text(json.dumps([{"sparsity": 1.5, "op_types": ["Conv2d"]}, {"sparsity": 0.1, "op_names": ["fcc"]}]))
    status, _, stderr = run_job(capsys, "--config", str(config), "--no-cache", "--output", str(tmp_path / "o"))
    assert status == 1
    assert f"--config {config}: invalid config_list for L1FilterPruner (2 problem(s)):" in stderr
    assert "config_list[0].sparsity: 1.5 is greater than the maximum of 1" in stderr
    assert "config_list[1].op_names: the model has no module named 'fcc'; did you mean 'fc'?" in stderr


def test_sparsity_one_is_the_same_from_the_option_and_from_a_config(tmp_path, capsys) -> None:
    config = tmp_path / "one.json"
    config.write_text(json.dumps([{"sparsity": 1.0, "op_types": ["default"]}]))
    assert run_job(capsys, *TINY, "--sparsity", "1.0", "--output", str(tmp_path / "a"), "--quiet")[0] == 0
    assert run_job(capsys, *TINY, "--config", str(config), "--output", str(tmp_path / "b"), "--quiet")[0] == 0
    by_option, by_config = report_of(tmp_path / "a"), report_of(tmp_path / "b")
    assert by_option["config_list"] == by_config["config_list"]
    # a filter pruner keeps one filter per layer: 3 of 4 and 7 of 8 pruned
    assert by_option["layer_sparsity"] == by_config["layer_sparsity"] == {"conv1": 0.75, "conv2": 0.875}


def test_a_rerun_replaces_what_the_previous_run_left(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert run_job(capsys, *TINY, "--sensitivity", "--output", str(out), "--quiet")[0] == 0
    first = set(report_of(out)["artifacts"])
    assert {"sensitivity.csv", "sensitivity.png"} <= first
    (out / "model_int8.onnx").write_bytes(b"stale")  # as a --quantize run would have left it
    (out / "notes.txt").write_text("the user's own file")
    assert run_job(capsys, *TINY, "--output", str(out), "--quiet")[0] == 0
    report = report_of(out)
    assert set(report["artifacts"]) == first - {"sensitivity.csv", "sensitivity.png"}
    assert sorted(p.name for p in out.iterdir()) == sorted([*report["artifacts"], "notes.txt"])


def test_user_model_data_config_and_sensitivity(tmp_path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps([{"sparsity": 0.5, "op_names": ["conv2"]}]))
    out = tmp_path / "out"
    status = main(["compress", *TINY, "--epochs", "2", "--config", str(config), "--sensitivity", "--output", str(out),
                   "--quiet"])
    assert status == 0
    report = report_of(out)
    assert report["layer_sparsity"] == {"conv2": 0.5}
    assert report["data"] == "tests.jobs.test_compress:tiny_data (tensors)"
    rows = (out / "sensitivity.csv").read_text().splitlines()
    assert rows[0] == "layername,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"
    assert [row.split(",")[0] for row in rows[1:]] == ["conv1", "conv2"]


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


@pytest.mark.skipif("ptq" not in {info.name for info in nncore.list_compressors()},
                    reason="PtqQuantizer (issue 11) is not registered in this checkout")
def test_quantize_ptq_calibrates_and_measures_int8_in_onnx_runtime(tmp_path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "out"
    status, stdout, stderr = run_job(capsys, "--epochs", "2", "--finetune-epochs", "1", "--batch-size", "256",
                                     "--quantize", "ptq", "--output", str(out))
    assert status == 0, stderr
    assert "quantizing: PtqQuantizer, calibrating" in stderr and "ptq fine-tuning" not in stderr
    report = report_of(out)
    assert report["notes"] == []
    assert {"model_ptq.pt", "calibration.pt", "model_int8.onnx"} <= set(report["artifacts"])
    int8, fp32 = report["int8"], report["compressed"]
    assert int8["size_bytes"] < fp32["size_bytes"] and int8["latency_ms"] > 0
    # the int8 accuracy is ONNX Runtime's on the test set, the same computation here
    import numpy as np
    import onnxruntime

    from nncore.data import digits_tensors

    _, _, x_test, y_test = digits_tensors()
    session = onnxruntime.InferenceSession(str(out / "model_int8.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x_test.numpy().astype(np.float32)})[0]
    assert int8["accuracy"] == pytest.approx(float((logits.argmax(1) == y_test.numpy()).mean()))
    assert abs(int8["accuracy"] - fp32["accuracy"]) < 0.05
    header = stdout.splitlines()[0].split()
    assert header == ["baseline", "compressed", "int8", "(onnxruntime)"]


def test_quantize_qat_goes_on_to_an_int8_onnx_model(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "out"
    assert main(["compress", "--epochs", "1", "--finetune-epochs", "1", "--batch-size", "256", "--quantize", "qat",
                 "--output", str(out), "--quiet"]) == 0
    report = report_of(out)
    assert report["notes"] == []
    assert {"accuracy", "size_bytes", "latency_ms", "latency_iqr_ms", "batch_latency_ms"} <= set(report["int8"])
    assert 0.0 <= report["int8"]["accuracy"] <= 1.0
    assert {"model_int8.onnx", "calibration.pt", "model_qat.pt"} <= set(report["artifacts"])
    graph = onnx.load(str(out / "model_int8.onnx")).graph
    operators = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= operators
    calibration = torch.load(out / "calibration.pt", weights_only=True)
    assert {"conv1", "conv2", "conv3", "fc"} <= set(calibration)
    assert calibration["conv1"]["weight_bits"] == 8
    assert report["int8"]["size_bytes"] < report["compressed"]["size_bytes"]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out / "model_int8.onnx"), providers=["CPUExecutionProvider"])
    batch = torch.rand(16, 1, 8, 8).numpy()  # the batch axis is dynamic
    assert session.run(None, {session.get_inputs()[0].name: batch})[0].shape == (16, 10)


def test_a_cached_baseline_gives_the_same_result_as_a_trained_one(tmp_path, capsys) -> None:
    for name in ("trained", "cached"):
        assert run_job(capsys, *TINY, "--finetune-epochs", "2", "--output", str(tmp_path / name), "--quiet")[0] == 0
    assert len(list((tmp_path / "cache").glob("baseline-*.pt"))) == 1
    trained, cached = (torch.load(tmp_path / name / "model_pruned.pt", weights_only=True)
                       for name in ("trained", "cached"))
    assert trained.keys() == cached.keys() and all(torch.equal(trained[k], cached[k]) for k in trained)


def test_a_forged_report_never_removes_anything_outside_the_folder(tmp_path) -> None:
    from nncore.jobs.output import clear_previous_run

    folder = tmp_path / "out"
    (folder / "algo_run").mkdir(parents=True)
    (tmp_path / "precious").mkdir()
    (folder / "report.json").write_text(json.dumps({"artifacts": ["../", "..", "../precious/", "/etc/", ".x/",
                                                                  "algo_run/", "report.json"]}))
    assert clear_previous_run(folder) == ["algo_run/", "report.json"]
    assert (tmp_path / "precious").is_dir() and list(folder.iterdir()) == []
