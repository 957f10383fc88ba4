"""Latency measured interleaved, with its spread; per-layer weight reduction after speedup."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from nncore.jobs import measure
from nncore.jobs.cost import weight_reduction
from nncore.jobs.pruning import make_pruner
from nncore.speedup import ModelSpeedup
from nncore.zoo import DigitsCNN


def test_runs_are_interleaved_in_rotating_order(monkeypatch) -> None:
    calls = []
    runners = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    result = measure.interleaved_latency(runners, rounds=3)
    warmup = measure.WARMUP_CALLS
    assert calls[:3 * warmup] == ["a"] * warmup + ["b"] * warmup + ["c"] * warmup
    assert calls[3 * warmup:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {name: r["runs"] for name, r in result.items()} == {"a": 3, "b": 3, "c": 3}


def test_median_and_quartiles_of_the_times(monkeypatch) -> None:
    now = [0.0]
    durations = iter([0.001, 0.005, 0.002, 0.004, 0.003])  # seconds, one per round
    monkeypatch.setattr(measure.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(measure, "WARMUP_CALLS", 0)

    def runner() -> None:
        now[0] += next(durations)

    result = measure.interleaved_latency({"only": runner}, rounds=5)["only"]
    assert result == {"median": pytest.approx(3.0), "p25": pytest.approx(1.5), "p75": pytest.approx(4.5), "runs": 5}


def test_weight_reduction_counts_what_speedup_removed() -> None:
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    example = torch.zeros(1, 1, 8, 8)
    pruner = make_pruner("l1", model, [{"sparsity": 0.5, "op_names": ["conv2"]}], example)
    pruner.compress()
    masks = pruner.masks()
    pruner.unwrap_model()
    shrunk = copy.deepcopy(model)
    ModelSpeedup(shrunk, example, masks).speedup_model()
    reduction = weight_reduction(model, shrunk, True)
    # conv2 keeps 16 of 32 filters; bn2 16 of 32 channels; conv3 reads 16 of 32 input channels
    assert reduction["conv2"] == {"removed": 0.5, "zero": 0.0}
    assert reduction["bn2"] == {"removed": 0.5, "zero": 0.0}
    assert reduction["conv3"] == {"removed": 0.5, "zero": 0.0}
    assert reduction["conv1"] == reduction["fc"] == {"removed": 0.0, "zero": 0.0}
    # without speedup nothing is removed, and the masked zeros are counted
    masked = weight_reduction(model, model, False)
    assert masked["conv2"] == {"removed": 0.0, "zero": 0.5} and masked["conv3"]["zero"] == 0.0


def test_unstructured_zeros_stay_in_place() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    with torch.no_grad():
        model[0].weight[:, :2] = 0
    assert weight_reduction(model, copy.deepcopy(model), True) == {"0": {"removed": 0.0, "zero": 0.5}}
