"""Post-training int8 with nncore side by side with ONNX Runtime's own quantization.

Accuracy (``--part accuracy``), on scikit-learn's digits (fixed split, 1347 train / 450 test):
a CNN (``nncore.zoo.DigitsCNN``) and a small transformer (8x8 images as 16 patches of 2x2, two
pre-norm encoder layers) are trained in fp32. Both sides start from the same fp32 ONNX graph
(``nncore.speedup.int8.export_float_onnx``) and calibrate on the same 256 training images, in
batches of 32; every accuracy is measured in ONNX Runtime on the 450 test images.

* nncore static: ``PtqQuantizer`` (weights, inputs and outputs of every Conv/Linear, 8 bits) with
  each observer, then ``export_int8_onnx(mode="static")``;
* ONNX Runtime static: ``quantize_static`` (QDQ, per channel, with each of its calibration methods);
* dynamic (transformer): ``export_int8_onnx(mode="dynamic")`` against ``quantize_dynamic``.

Both sides use the same weight format: int8 per channel, 7-bit (``reduce_range``) as this CPU
has no VNNI. Drop = fp32 accuracy - int8 accuracy (points); nncore's drop must be <= ONNX
Runtime's with the matching method (minmax and mse against MinMax, percentile against
Percentile at the same percentile, entropy against Entropy; dynamic against dynamic). One test
image is 0.22 points, so two columns less subject to chance are printed beside it: the share of
test images on which the int8 model predicts what the fp32 model predicts, and the RMS error of
the int8 logits relative to the fp32 logits' RMS. The models train on one thread (seeded).

Speed (``--part speed``), batch 1, one process, every ONNX Runtime session with ``--threads``
intra-op threads; the rounds are interleaved (the order rotates) so that machine noise hits
all models alike, and the medians of ``--runs`` runs are reported, with speed-up = fp32 median /
int8 median and ratio = nncore's speed-up / ONNX Runtime's:

* static int8 ResNet-18 (``nncore.zoo.resnet18``, random weights, 224x224): nncore
  ``PtqQuantizer`` + static export against ``quantize_static``, calibrated on the same 8 random
  images; target ratio >= 0.95;
* dynamic int8 BERT-base-shape encoder (``BertModel``: 12 layers, hidden 768, 12 heads, FFN 3072,
  vocabulary 30522, random weights, 128 tokens): ``export_int8_onnx(mode="dynamic")`` against
  ``quantize_dynamic``, each weight format on both sides: nncore's default (per channel, 7-bit
  ``reduce_range``) and ``quantize_dynamic``'s default (``per_channel=False, reduce_range=False``);
  target ratio >= 0.95 for each.

    python benchmarks/ptq.py [--part all] [--runs 40] [--threads 2] [--seed 0] [--no-spinning]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch

from bench_utils import seed_everything  # noqa: E402
import torch.nn as nn
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_dynamic, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from nncore.builtin_quantizers import PtqQuantizer
from nncore.data import digits_tensors, tensor_loaders, train_epochs
from nncore.speedup.int8 import export_float_onnx, export_int8_onnx
from nncore.zoo import DigitsCNN, resnet18

WIO8 = [{"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_types": ["default"]}]
PERCENTILE = 99.99
OBSERVERS = {"minmax": "MinMax", "percentile": "Percentile", "mse": "MinMax", "entropy": "Entropy"}


class DigitsTransformer(nn.Module):
    """8x8 digits as 16 patches of 2x2 pixels: embedding, 2 pre-norm encoder layers (4 heads,
    width 64, FFN 128), mean pooling, a linear head."""

    def __init__(self, width: int = 64, heads: int = 4, layers: int = 2, ffn: int = 128):
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(4, width)
        self.position = nn.Parameter(torch.zeros(1, 16, width))
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "norm1": nn.LayerNorm(width), "qkv": nn.Linear(width, 3 * width), "proj": nn.Linear(width, width),
            "norm2": nn.LayerNorm(width), "fc1": nn.Linear(width, ffn), "fc2": nn.Linear(ffn, width),
        }) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        patches = x.reshape(batch, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(batch, 16, 4)
        h = self.embed(patches) + self.position
        for block in self.blocks:
            q, k, v = block["qkv"](block["norm1"](h)).reshape(batch, 16, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            attention = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v
            h = h + block["proj"](attention.transpose(1, 2).reshape(batch, 16, -1))
            h = h + block["fc2"](nn.functional.gelu(block["fc1"](block["norm2"](h))))
        return self.head(self.norm(h).mean(dim=1))


class Batches(CalibrationDataReader):
    """ONNX Runtime's view of the calibration batches nncore gets."""

    def __init__(self, batches: list[torch.Tensor]):
        self.batches = batches
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)

    def rewind(self) -> None:
        self.items = iter([{"input": batch.numpy()} for batch in self.batches])


def session(path: str | Path, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), options or ort.SessionOptions(), providers=["CPUExecutionProvider"])


def onnx_logits(path: str | Path, x: torch.Tensor) -> np.ndarray:
    return session(path).run(None, {"input": x.numpy()})[0]


def ort_static(prepared: Path, out: Path, batches: list[torch.Tensor], method: str) -> Path:
    quantize_static(str(prepared), str(out), Batches(batches), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method), extra_options={"CalibPercentile": PERCENTILE})
    return out


def accuracy_rows(name: str, model: nn.Module, calibration: list[torch.Tensor], x_test: torch.Tensor,
                  y_test: torch.Tensor, directory: Path, dynamic: bool) -> list[tuple[str, str, np.ndarray]]:
    """``(side, method, test logits in ONNX Runtime)`` rows for one trained model."""
    axes = {"input": [0]}
    fp32 = export_float_onnx(model, directory / f"{name}_fp32.onnx", [1, 1, 8, 8], dynamic_axes=axes)
    prepared = directory / f"{name}_prepared.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    rows = [("fp32", "-", onnx_logits(fp32, x_test))]
    for observer in OBSERVERS:
        quantized = copy.deepcopy(model)
        quantizer = PtqQuantizer(quantized, WIO8, calibration, observer=observer, percentile=PERCENTILE)
        quantizer.compress()
        path = export_int8_onnx(quantized, quantizer.calibration_config(), directory / f"{name}_{observer}.onnx",
                                [1, 1, 8, 8], dynamic_axes=axes)
        rows.append(("nncore static", observer, onnx_logits(path, x_test)))
    for method in dict.fromkeys(OBSERVERS.values()):
        path = ort_static(prepared, directory / f"{name}_ort_{method}.onnx", calibration, method)
        rows.append(("ORT quantize_static", method, onnx_logits(path, x_test)))
    if dynamic:
        path = export_int8_onnx(model, None, directory / f"{name}_dynamic.onnx", [1, 1, 8, 8], mode="dynamic",
                                dynamic_axes=axes)
        rows.append(("nncore dynamic", "-", onnx_logits(path, x_test)))
        ort_path = directory / f"{name}_ort_dynamic.onnx"
        quantize_dynamic(str(prepared), str(ort_path), per_channel=True, reduce_range=True, weight_type=QuantType.QInt8)
        rows.append(("ORT quantize_dynamic", "-", onnx_logits(ort_path, x_test)))
    return rows


def print_accuracy(name: str, rows: list[tuple[str, str, np.ndarray]], labels: torch.Tensor) -> list[str]:
    """Print the table (accuracy, its drop from fp32, agreement with fp32's predictions, and the
    logits' RMS error relative to fp32's); return the comparisons that fail."""
    reference = rows[0][2]
    accuracy = {(side, method): float((logits.argmax(axis=1) == labels.numpy()).mean() * 100)
                for side, method, logits in rows}
    fp32 = accuracy[("fp32", "-")]
    drops = {key: fp32 - value for key, value in accuracy.items()}
    print(f"\n{name}: ONNX Runtime accuracy on {len(labels)} test images (fp32 {fp32:.2f}%)")
    print(f"| {'side':<21} | {'method':<10} | {'accuracy %':>10} | {'drop':>6} | {'agree %':>7} | {'rel. RMSE':>9} |")
    print(f"|{'-' * 23}|{'-' * 12}|{'-' * 12}|{'-' * 8}|{'-' * 9}|{'-' * 11}|")
    for side, method, logits in rows[1:]:
        agree = float((logits.argmax(axis=1) == reference.argmax(axis=1)).mean() * 100)
        error = float(np.sqrt(((logits - reference) ** 2).mean() / (reference ** 2).mean()))
        print(f"| {side:<21} | {method:<10} | {accuracy[(side, method)]:>10.2f} | {drops[(side, method)]:>6.2f} | "
              f"{agree:>7.2f} | {error:>9.4f} |")
    failures = []
    for observer, method in OBSERVERS.items():
        if drops[("nncore static", observer)] > drops[("ORT quantize_static", method)] + 1e-9:
            failures.append(f"{name}: nncore {observer} drop > ORT {method} drop")
    if ("nncore dynamic", "-") in drops and drops[("nncore dynamic", "-")] > drops[("ORT quantize_dynamic", "-")] + 1e-9:
        failures.append(f"{name}: nncore dynamic drop > ORT dynamic drop")
    return failures


def run_accuracy(args: argparse.Namespace) -> list[str]:
    x_train, y_train, x_test, y_test = digits_tensors()
    calibration = list(x_train[:256].split(32))
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, build, epochs, lr, dynamic in (("DigitsCNN", DigitsCNN, args.cnn_epochs, 1e-2, False),
                                                 ("DigitsTransformer", DigitsTransformer, args.transformer_epochs,
                                                  1e-3, True)):
            seed_everything(args.seed)
            model = build()
            train_loader, _ = tensor_loaders(x_train, y_train, x_test, y_test, seed=args.seed)
            started = time.perf_counter()
            torch.set_num_threads(1)  # tiny models: one thread is faster on a shared machine, and repeatable
            train_epochs(model, train_loader, epochs, lr=lr, verbose=False)
            torch.set_num_threads(args.threads)
            model.eval()
            print(f"trained {name} ({epochs} epochs, {time.perf_counter() - started:.0f} s)", flush=True)
            rows = accuracy_rows(name, model, calibration, x_test, y_test, Path(tmp), dynamic)
            failures += print_accuracy(name, rows, y_test)
    return failures


# -- speed ----------------------------------------------------------------------------------------

def time_interleaved(sessions: dict[str, ort.InferenceSession], feeds: dict[str, np.ndarray], runs: int,
                     warmup: int = 3) -> dict[str, float]:
    """Median seconds per run of each session, rounds interleaved in rotating order (an alternating
    order would run the last session twice in a row, with warm caches, at every turn)."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    names = list(sessions)
    for round_index in range(runs + warmup):
        shift = round_index % len(names)
        order = names[shift:] + names[:shift]
        for name in order:
            start = time.perf_counter()
            sessions[name].run(None, feeds)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def print_speed(title: str, medians: dict[str, float], pairs: list[tuple[str, str]]) -> list[float]:
    print(f"\n{title}")
    print(f"| {'model':<36} | {'median ms':>9} | {'fp32 / this':>11} |")
    print(f"|{'-' * 38}|{'-' * 11}|{'-' * 13}|")
    for name, value in medians.items():
        print(f"| {name:<36} | {value * 1e3:>9.1f} | {medians['fp32'] / value:>11.2f} |")
    ratios = []
    for ours, theirs in pairs:
        ratio = (medians["fp32"] / medians[ours]) / (medians["fp32"] / medians[theirs])
        ratios.append(ratio)
        print(f"speed-up ratio {ours} / {theirs}: {ratio:.3f} (target >= 0.95)")
    return ratios


def session_options(args: argparse.Namespace) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    if args.no_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def resnet_speed(args: argparse.Namespace, directory: Path) -> list[float]:
    seed_everything(args.seed)
    shape = [1, 3, 224, 224]
    model = resnet18().eval()
    images = [torch.randn(*shape) for _ in range(8)]
    quantizer = PtqQuantizer(copy.deepcopy(model), WIO8, images)
    quantizer.compress()
    paths = {"fp32": export_float_onnx(model, directory / "resnet_fp32.onnx", shape),
             "nncore static int8": export_int8_onnx(quantizer.bound_model, quantizer.calibration_config(),
                                                    directory / "resnet_nncore.onnx", shape)}
    prepared = directory / "resnet_prepared.onnx"
    quant_pre_process(str(paths["fp32"]), str(prepared))
    paths["ORT static int8"] = ort_static(prepared, directory / "resnet_ort.onnx", images, "MinMax")
    sessions = {name: session(path, session_options(args)) for name, path in paths.items()}
    medians = time_interleaved(sessions, {"input": np.random.randn(*shape).astype(np.float32)}, args.runs)
    return print_speed(f"ResNet-18, batch 1, 224x224, {args.threads} threads, {args.runs} interleaved runs",
                       medians, [("nncore static int8", "ORT static int8")])


def bert_speed(args: argparse.Namespace, directory: Path) -> list[float]:
    import transformers

    seed_everything(args.seed)
    config = transformers.BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                     intermediate_size=3072, vocab_size=30522)
    model = transformers.BertModel(config).eval()
    ids = torch.randint(1, config.vocab_size, (1, 128))
    dummy = {"input_ids": ids}
    paths = {"fp32": export_float_onnx(model, directory / "bert_fp32.onnx", dummy_input=dummy)}
    for label, per_channel, reduce_range in (("per channel, 7-bit", True, True), ("per tensor, 8-bit", False, False)):
        paths[f"nncore dynamic ({label})"] = export_int8_onnx(
            model, None, directory / f"bert_nncore_{per_channel}.onnx", dummy_input=dummy, mode="dynamic",
            per_channel=per_channel, reduce_range=reduce_range)
        path = directory / f"bert_ort_{per_channel}.onnx"
        quantize_dynamic(str(paths["fp32"]), str(path), per_channel=per_channel, reduce_range=reduce_range,
                         weight_type=QuantType.QInt8)
        paths[f"ORT dynamic ({label})"] = path
    sessions = {name: session(path, session_options(args)) for name, path in paths.items()}
    medians = time_interleaved(sessions, {"input_ids": ids.numpy()}, args.runs)
    return print_speed(f"BERT-base-shape encoder, batch 1, 128 tokens, {args.threads} threads, "
                       f"{args.runs} interleaved runs", medians,
                       [(f"nncore dynamic ({label})", f"ORT dynamic ({label})")
                        for label in ("per channel, 7-bit", "per tensor, 8-bit")])


def run_speed(args: argparse.Namespace) -> list[str]:
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, measure in (("ResNet-18 static", resnet_speed), ("BERT dynamic", bert_speed)):
            ratios = measure(args, Path(tmp))
            failures += [f"{name}: speed-up ratio {r:.3f} < 0.95" for r in ratios if r < 0.95]
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["accuracy", "speed", "all"], default="all")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cnn-epochs", type=int, default=20)
    parser.add_argument("--transformer-epochs", type=int, default=100)
    parser.add_argument("--no-spinning", action="store_true", help="session.intra_op.allow_spinning=0 for every session")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts: dict[str, Callable[[argparse.Namespace], list[str]]] = {"accuracy": run_accuracy, "speed": run_speed}
    failures: list[str] = []
    for part, run in parts.items():
        if args.part in (part, "all"):
            failures += run(args)
    print("\n" + ("every target met" if not failures else "targets missed:\n  " + "\n  ".join(failures)))


if __name__ == "__main__":
    main()
