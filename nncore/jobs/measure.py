"""Accuracy, latency and size of a model, run by PyTorch or by ONNX Runtime."""
from __future__ import annotations

import io
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from nncore.data import JobData, accuracy
from nncore.jobs.baseline import dummy_input
from nncore.jobs.cost import effective_flops_params

LATENCY_RUNS = 100
LATENCY_BATCH = 256


def state_dict_bytes(model: nn.Module) -> int:
    """Size in bytes of the model's state_dict as ``torch.save`` writes it."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def median_latency_ms(run_once: Callable[[], Any], runs: int = LATENCY_RUNS) -> float:
    """Median wall time of ``run_once()`` in milliseconds (after warm-up calls)."""
    for _ in range(5):
        run_once()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def measure(model: nn.Module, data: JobData, *, masked: bool = False) -> dict[str, Any]:
    """Accuracy, params, FLOPs (per input), CPU latency (batch of one and of ``LATENCY_BATCH``) and
    file size of ``model``."""
    from nncore.utils import count_flops_params

    example = dummy_input(data)
    model.eval()
    if masked:
        flops, params = effective_flops_params(model, example)
    else:
        flops, params, _ = count_flops_params(model, (example,), verbose=False)
    batch = torch.randn((LATENCY_BATCH, *example.shape[1:]), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        latency = median_latency_ms(lambda: model(example))
        batch_latency = median_latency_ms(lambda: model(batch), runs=20)
    return {"accuracy": accuracy(model, data.test_loader), "params": int(params), "flops": int(flops),
            "latency_ms": latency, "batch_latency_ms": batch_latency, "size_bytes": state_dict_bytes(model),
            "estimated": masked}


def measure_onnx(path: Path, data: JobData) -> dict[str, Any]:
    """Accuracy, latency (batch of one) and file size of an ONNX model run by onnxruntime."""
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    correct = count = 0
    for inputs, labels in data.test_loader:
        for row, label in zip(inputs.numpy(), labels.numpy()):
            logits = session.run(None, {input_name: row[None].astype(np.float32)})[0]
            correct += int(logits.argmax() == label)
            count += 1
    example = dummy_input(data).numpy()
    latency = median_latency_ms(lambda: session.run(None, {input_name: example}))
    return {"accuracy": correct / count, "latency_ms": latency, "size_bytes": path.stat().st_size}
