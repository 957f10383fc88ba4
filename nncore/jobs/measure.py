"""Accuracy, cost, size and latency of the models a job compares (PyTorch or ONNX Runtime).

Latency is measured for all the compared models together, interleaved (one call of each model
per round, the order rotating), so that a change in the machine's load hits them alike; each
model's figure is the median over the rounds, with the interquartile range as its spread.
"""
from __future__ import annotations

import io
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn as nn

from nncore.data import JobData, accuracy
from nncore.jobs.cost import effective_flops_params

LATENCY_BATCH = 256
LATENCY_ROUNDS = 200
"""Rounds of the batch-of-one latency (at least; more until :data:`LATENCY_SECONDS` have passed)."""
LATENCY_SECONDS = 2.0
BATCH_LATENCY_ROUNDS = 15
"""Rounds of the batch latency (at least; more until :data:`LATENCY_SECONDS` have passed)."""
WARMUP_CALLS = 5


def state_dict_bytes(model: nn.Module) -> int:
    """Size in bytes of the model's state_dict as ``torch.save`` writes it."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def interleaved_latency(runners: Mapping[str, Callable[[], Any]], *, rounds: int = LATENCY_ROUNDS,
                        seconds: float = 0.0) -> dict[str, dict[str, float]]:
    """Wall time of each runner in milliseconds: ``{name: {"median", "p25", "p75", "runs"}}``.

    After :data:`WARMUP_CALLS` calls each, every round calls each runner once, starting one
    further along each round; rounds go on until there were ``rounds`` of them and ``seconds``
    have passed (at most ten times ``rounds``).
    """
    names = list(runners)
    for name in names:
        for _ in range(WARMUP_CALLS):
            runners[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    started = time.perf_counter()
    done = 0
    while done < rounds or (time.perf_counter() - started < seconds and done < 10 * rounds):
        for offset in range(len(names)):
            name = names[(done + offset) % len(names)]
            start = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - start)
        done += 1
    result = {}
    for name, values in times.items():
        p25, p50, p75 = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
        result[name] = {"median": p50 * 1e3, "p25": p25 * 1e3, "p75": p75 * 1e3, "runs": len(values)}
    return result


def torch_runner(model: nn.Module, batch: torch.Tensor) -> Callable[[], Any]:
    """One eval-mode, no-grad forward pass of ``model`` on ``batch``."""
    model.eval()

    def run() -> Any:
        with torch.no_grad():
            return model(batch)

    return run


def onnx_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session on ``threads`` threads (as PyTorch runs with ``--threads``)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_runner(session: Any, batch: torch.Tensor) -> Callable[[], Any]:
    """One ONNX Runtime run of ``session`` on ``batch``."""
    feed = {session.get_inputs()[0].name: batch.numpy().astype(np.float32)}
    return lambda: session.run(None, feed)


def onnx_accuracy(session: Any, data: JobData) -> float:
    """Top-1 accuracy of an ONNX model over the test loader, run by ONNX Runtime."""
    name = session.get_inputs()[0].name
    correct = count = 0
    for inputs, labels in data.test_loader:
        logits = session.run(None, {name: inputs.numpy().astype(np.float32)})[0]
        correct += int((logits.argmax(axis=1) == labels.numpy()).sum())
        count += len(labels)
    return correct / count if count else float("nan")


def model_figures(model: nn.Module, data: JobData, *, masked: bool = False) -> dict[str, Any]:
    """Accuracy, params, FLOPs (per input) and file size of ``model``; ``masked``: the cost is
    estimated from its zero channels (no speedup)."""
    from nncore.utils import count_flops_params

    example = torch.zeros(data.input_shape)
    model.eval()
    if masked:
        flops, params = effective_flops_params(model, example)
    else:
        flops, params, _ = count_flops_params(model, (example,), verbose=False)
    return {"accuracy": accuracy(model, data.test_loader), "params": int(params), "flops": int(flops),
            "size_bytes": state_dict_bytes(model), "estimated": masked}


def add_latencies(figures: Mapping[str, dict[str, Any]],
                  runners: Mapping[str, Callable[[torch.Tensor], Callable[[], Any]]], data: JobData) -> None:
    """Measure every model's latency, interleaved, at batch 1 and :data:`LATENCY_BATCH`, into ``figures``.

    :param runners: ``{name: make_runner(batch) -> run}`` for each model (``figures`` has the same names).
    """
    one = torch.zeros(data.input_shape)
    batch = torch.randn((LATENCY_BATCH, *data.input_shape[1:]), generator=torch.Generator().manual_seed(0))
    for key, inputs, rounds, seconds in (("latency", one, LATENCY_ROUNDS, LATENCY_SECONDS),
                                         ("batch_latency", batch, BATCH_LATENCY_ROUNDS, LATENCY_SECONDS)):
        timed = interleaved_latency({name: make(inputs) for name, make in runners.items()}, rounds=rounds,
                                    seconds=seconds)
        for name, result in timed.items():
            figures[name][f"{key}_ms"] = result["median"]
            figures[name][f"{key}_iqr_ms"] = [result["p25"], result["p75"]]
            figures[name][f"{key}_runs"] = result["runs"]
