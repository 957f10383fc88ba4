"""Accuracy of every built-in quantizer on scikit-learn's digits, after the same fine-tuning budget.

A ``nncore.zoo.DigitsCNN`` is trained in fp32, then each quantizer fine-tunes a copy for the
same number of epochs (the fp32 row fine-tunes without quantization). Reported per row: test
accuracy of the (fake-)quantized model in PyTorch; for QAT, the accuracy of the int8 ONNX model
from ``export_int8_onnx`` in ONNX Runtime (which must stay within 0.5 points); the size of the
weights packed at their bit width, the size of the ONNX file (fp32 for the fp32 row, int8 for
QAT) and its batch-1 latency in ONNX Runtime (median, 2 threads, fp32 and int8 interleaved).

    python benchmarks/quantization_accuracy.py [--pretrain-epochs 30] [--epochs 10] [--seed 0]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from nncore.builtin_quantizers import BNNQuantizer, DoReFaQuantizer, LsqQuantizer, NaiveQuantizer, QAT_Quantizer
from nncore.compressor import onnx_export_bytes
from nncore.speedup.int8 import export_int8_onnx
from nncore.zoo import DigitsCNN

INPUT_SHAPE = [1, 1, 8, 8]
ALL = ["default"]


def digits(seed: int) -> tuple[torch.Tensor, ...]:
    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return x_train, y_train, x_test, y_test


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int,
          quantizer: Any = None, make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimizer = (make_optimizer or (lambda m: torch.optim.Adam(m.parameters(), lr=lr)))(model)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(32):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
            if quantizer is not None:
                quantizer.step()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return 100.0 * float((model(x).argmax(1) == y).float().mean())


def onnx_accuracy(session: ort.InferenceSession, x: torch.Tensor, y: torch.Tensor) -> float:
    predictions = [session.run(None, {"input": sample.unsqueeze(0).numpy()})[0].argmax() for sample in x]
    return 100.0 * float(np.mean(np.array(predictions) == y.numpy()))


def packed_kib(model: nn.Module, bits: dict[str, int]) -> float:
    """Size of every parameter and buffer at its bit width (quantized weights at their bits, rest fp32)."""
    total = 0
    for name, tensor in model.state_dict().items():
        layer = name.rsplit(".", 1)[0]
        total += tensor.numel() * (bits.get(layer, 32) if name.endswith(".weight") else 32)
    return total / 8 / 1024


def session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def latencies(sessions: dict[str, ort.InferenceSession], runs: int = 300) -> dict[str, float]:
    x = np.random.rand(*INPUT_SHAPE).astype(np.float32)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for index in range(runs + 20):
        for name in (sessions if index % 2 == 0 else reversed(list(sessions))):
            start = time.perf_counter()
            sessions[name].run(None, {"input": x})
            if index >= 20:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e6 for name, values in times.items()}


def methods(dummy: torch.Tensor) -> dict[str, tuple[str, Callable[..., Any]]]:
    wio8 = [{"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_types": ALL}]
    return {
        "naive": ("W8", lambda m, o: NaiveQuantizer(m, [{"op_types": ALL}])),
        "qat": ("W8 A8 (in+out)", lambda m, o: QAT_Quantizer(m, wio8, o, dummy_input=dummy)),
        "dorefa": ("W4", lambda m, o: DoReFaQuantizer(m, [{"quant_types": ["weight"], "quant_bits": 4, "op_types": ALL}])),
        "lsq": ("W4", lambda m, o: LsqQuantizer(m, [{"quant_types": ["weight"], "quant_bits": 4, "op_types": ALL}], o)),
        "lsq-w4a4": ("W4 A4 (in)", lambda m, o: LsqQuantizer(
            m, [{"quant_types": ["weight", "input"], "quant_bits": 4, "op_types": ALL}], o)),
        "bnn": ("W1 (conv2, conv3)", lambda m, o: BNNQuantizer(
            m, [{"quant_types": ["weight"], "quant_bits": 1, "op_names": ["conv2", "conv3"]}], o)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a tiny model: one thread trains faster on a shared machine
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = digits(args.seed)
    pretrained = DigitsCNN()
    train(pretrained, x_train, y_train, args.pretrain_epochs, 1e-2 / 3, args.seed)
    rows = []
    directory = tempfile.mkdtemp()
    fp32 = copy.deepcopy(pretrained)
    train(fp32, x_train, y_train, args.epochs, args.lr, args.seed)
    fp32_path = str(Path(directory, "fp32.onnx"))
    Path(fp32_path).write_bytes(onnx_export_bytes(fp32, INPUT_SHAPE))
    rows.append(["fp32", "32", accuracy(fp32, x_test, y_test), None, packed_kib(fp32, {}), Path(fp32_path).stat().st_size / 1024])
    sessions = {"fp32": session(fp32_path)}
    for name, (bits_label, build) in methods(x_train[:2]).items():
        model = copy.deepcopy(pretrained)
        holder: dict[str, Any] = {}

        def make_optimizer(m: nn.Module, holder=holder, build=build) -> torch.optim.Optimizer:
            optimizer = torch.optim.Adam(m.parameters(), lr=args.lr)
            holder["quantizer"] = build(m, optimizer)
            holder["quantizer"].compress()
            return optimizer

        torch.manual_seed(args.seed)
        train(model, x_train, y_train, args.epochs, args.lr, args.seed, make_optimizer=make_optimizer)
        quantizer = holder["quantizer"]
        calibration = quantizer.export_model(str(Path(directory, f"{name}.pth")))
        bits = {layer: entry["weight_bits"] for layer, entry in calibration.items() if "weight_bits" in entry}
        row = [name, bits_label, accuracy(model, x_test, y_test), None, packed_kib(quantizer.inference_model(), bits), None]
        if name == "qat":
            int8_path = str(Path(directory, "qat_int8.onnx"))
            export_int8_onnx(model, calibration, int8_path, INPUT_SHAPE)
            sessions["qat int8"] = session(int8_path)
            row[3] = onnx_accuracy(sessions["qat int8"], x_test, y_test)
            row[5] = Path(int8_path).stat().st_size / 1024
        rows.append(row)
    fp32_onnx_accuracy = onnx_accuracy(sessions["fp32"], x_test, y_test)
    latency = latencies(sessions)
    print(f"digits: {len(x_train)} train / {len(x_test)} test images; DigitsCNN pretrained {args.pretrain_epochs} epochs, "
          f"then {args.epochs} epochs of fine-tuning per row (Adam, lr {args.lr}, batch 32, seed {args.seed})")
    print("| method | bits | accuracy % (PyTorch) | accuracy % (ONNX Runtime) | packed weights KiB | ONNX file KiB | ORT latency us (batch 1) |")
    print("|---|---|---|---|---|---|---|")
    for name, bits_label, acc, ort_acc, packed, onnx_kib in rows:
        if name == "fp32":
            ort_acc, onnx_kib, lat = fp32_onnx_accuracy, onnx_kib, latency["fp32"]
        else:
            lat = latency.get("qat int8") if name == "qat" else None
        cells = [name, bits_label, f"{acc:.2f}", "-" if ort_acc is None else f"{ort_acc:.2f} ({'int8' if name == 'qat' else 'fp32'})",
                 f"{packed:.1f}", "-" if onnx_kib is None else f"{onnx_kib:.1f}", "-" if lat is None else f"{lat:.0f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
