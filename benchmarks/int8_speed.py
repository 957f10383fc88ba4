"""Batch-1 latency of an int8 ONNX model from nncore's QAT calibration vs. the same model in fp32.

ResNet-18 (``nncore.zoo.resnet18``) is quantized with QAT_Quantizer (8-bit weight, input and
output), its ranges are tracked on a few training batches, then ``export_int8_onnx`` writes the
int8 model. For reference, ONNX Runtime's own static quantization (QDQ, per channel, its own
MinMax calibration on random data) is timed too. Every session runs in this one process with
``--threads`` intra-op threads; rounds are interleaved (the order alternates) so that machine
noise hits all models alike; the medians (and minima) of ``--runs`` runs are reported. Target:
fp32 / int8 >= 2.5. ``--no-spinning`` turns off ONNX Runtime's intra-op spin-waiting for every
session alike, which steadies the timings on a machine shared with other processes.

On an AVX2 CPU without VNNI (u8s8 via ``vpmaddubsw``) the int8 convolutions are about 2x the
fp32 ones, so at 224x224 (compute-bound) fp32 / int8 is about 1.9 for every quantization variant
(QDQ or QOperator, per channel or per tensor, 7- or 8-bit weights); at small inputs (e.g.
``--size 64``), where the fp32 model is bound by reading its weights, it is about 2.5-3.

    python benchmarks/int8_speed.py [--runs 60] [--size 224] [--threads 2] [--no-spinning]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from nncore.builtin_quantizers import QAT_Quantizer
from nncore.compressor import onnx_export_bytes
from nncore.speedup.int8 import export_int8_onnx
from nncore.zoo import resnet18


class RandomBatches(CalibrationDataReader):
    def __init__(self, shape: list[int], count: int) -> None:
        self.batches = iter([{"input": np.random.randn(*shape).astype(np.float32)} for _ in range(count)])

    def get_next(self):
        return next(self.batches, None)


def quantized_resnet18(shape: list[int], batches: int) -> QAT_Quantizer:
    torch.manual_seed(0)
    model = resnet18()
    config = [{"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_types": ["default"]}]
    quantizer = QAT_Quantizer(model, config, dummy_input=torch.randn(*shape))
    quantizer.compress()
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(2, *shape[1:]))
            quantizer.step()
    return quantizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration-batches", type=int, default=4)
    parser.add_argument("--no-spinning", action="store_true", help="session.intra_op.allow_spinning=0 for every session")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = [1, 3, args.size, args.size]
    quantizer = quantized_resnet18(shape, args.calibration_batches)
    with tempfile.TemporaryDirectory() as directory:
        paths = {name: str(Path(directory, f"{name}.onnx")) for name in ("fp32", "nncore_int8", "ort_static_int8")}
        Path(paths["fp32"]).write_bytes(onnx_export_bytes(quantizer.inference_model(), shape))
        export_int8_onnx(quantizer.bound_model, quantizer.calibration_config(), paths["nncore_int8"], shape)
        prepared = str(Path(directory, "prepared.onnx"))
        quant_pre_process(paths["fp32"], prepared)
        quantize_static(prepared, paths["ort_static_int8"], RandomBatches(shape, 4), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        if args.no_spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions = {name: ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
                    for name, path in paths.items()}
        sizes = {name: Path(path).stat().st_size / 2**20 for name, path in paths.items()}
    x = np.random.randn(*shape).astype(np.float32)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for round_index in range(args.runs + 5):
        order = list(sessions) if round_index % 2 == 0 else list(reversed(sessions))
        for name in order:
            start = time.perf_counter()
            sessions[name].run(None, {"input": x})
            if round_index >= 5:  # warm-up rounds are not counted
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    fastest = {name: min(values) for name, values in times.items()}
    spinning = ", no spinning" if args.no_spinning else ""
    print(f"resnet18, input {shape}, {args.threads} intra-op threads{spinning}, {args.runs} interleaved runs")
    print(f"{'model':<18}{'median ms':>10}{'fp32/this':>11}{'min ms':>9}{'fp32/this':>11}{'file MiB':>10}")
    for name in sessions:
        print(f"{name:<18}{median[name] * 1e3:>10.1f}{median['fp32'] / median[name]:>11.2f}"
              f"{fastest[name] * 1e3:>9.1f}{fastest['fp32'] / fastest[name]:>11.2f}{sizes[name]:>10.1f}")


if __name__ == "__main__":
    main()
