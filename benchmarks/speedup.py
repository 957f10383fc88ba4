"""Model speedup, side by side: nncore vs Torch-Pruning vs NNI 2.10 (each skipped if missing).

    /tmp/peers/bin/python benchmarks/speedup.py [--runs 30] [--repeats 3] [--skip-nni]

For each network: masks of nncore's ``L1FilterPruner`` at 50% of every conv's filters with
``dependency_aware=True`` (coupled convs share one mask; the BatchNorm after each conv follows). nncore and NNI speed up those masks; Torch-Pruning builds its
dependency graph and prunes 50% of the channels with its own L1 criterion on the same network.
Latency: batch 1, 2 threads, median of ``--runs`` runs. Speedup time: seconds of the speedup
call (Torch-Pruning: MetaPruner construction, i.e. its DependencyGraph build, + ``step()``),
all in this process, nncore and Torch-Pruning alternated ``--repeats`` times (median); NNI once.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nncore.builtin_pruners import L1FilterPruner  # noqa: E402
from nncore.speedup import ModelSpeedup  # noqa: E402
from nncore.speedup.masks import apply_masks  # noqa: E402
from nncore.zoo import mobilenet_v2, resnet18, resnet50  # noqa: E402

try:
    from nncore.utils import count_flops_params
except ImportError:  # pragma: no cover - counter not there yet
    count_flops_params = None


def l1_filter_masks(model: nn.Module, dummy: torch.Tensor, ratio: float) -> dict:
    """Masks of nncore's L1FilterPruner, dependency-aware (BatchNorm followers included)."""
    pruned = copy.deepcopy(model)
    pruner = L1FilterPruner(pruned, [{"sparsity": ratio, "op_types": ["Conv2d"]}], dependency_aware=True,
                            dummy_input=dummy)
    pruner.compress()
    return pruner.masks()


def latencies_ms(models: list[nn.Module], x: torch.Tensor, runs: int) -> list[float]:
    """Median latency of each model; runs are interleaved so that load drift hits all alike."""
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for model in models:
            model.eval()
            for _ in range(2):
                model(x)
        for _ in range(runs):
            for model, bucket in zip(models, times):
                start = time.perf_counter()
                model(x)
                bucket.append((time.perf_counter() - start) * 1000)
    return [statistics.median(bucket) for bucket in times]


def flops_params(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    params = sum(p.numel() for p in model.parameters())
    if count_flops_params is None:
        return float("nan"), params / 1e6
    flops, _, _ = count_flops_params(model, x, verbose=False)
    return flops / 1e9, params / 1e6


def run_nncore(model, x, masks):
    model = copy.deepcopy(model)
    start = time.perf_counter()
    ModelSpeedup(model, x, masks).speedup_model()
    return model, time.perf_counter() - start


def run_torch_pruning(model, x, ratio):
    try:
        import torch_pruning as tp
    except ImportError:
        return None, None
    model = copy.deepcopy(model)
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    start = time.perf_counter()
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=[classifier])
    pruner.step()
    return model, time.perf_counter() - start


def run_nni(model, x, masks):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from nni.compression.pytorch import ModelSpeedup as NNISpeedup
    except Exception:
        return None, None
    model = copy.deepcopy(model)
    start = time.perf_counter()
    try:
        NNISpeedup(model, x, masks).speedup_model()
    except Exception as exc:  # NNI fails on some models: report, don't stop
        print(f"  NNI failed: {type(exc).__name__}: {exc}")
        return None, None
    return model, time.perf_counter() - start


def max_difference(model, reference, x) -> float:
    with torch.no_grad():
        return float((model(x) - reference(x)).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--skip-nni", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="speedup timings per tool (median)")
    parser.add_argument("--models", default="resnet18,resnet50,mobilenet_v2")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    builders = {"resnet18": resnet18, "resnet50": resnet50, "mobilenet_v2": mobilenet_v2}
    header = (f"{'model':<13}{'tool':<14}{'params M':>15}{'GFLOPs':>15}{'latency ms':>17}"
              f"{'speedup s':>11}{'max diff':>11}")
    print(header)
    print("-" * len(header))
    for name in args.models.split(","):
        model = builders[name]().eval()
        x = torch.randn(1, 3, 224, 224)
        masks = l1_filter_masks(model, x, 0.5)
        reference = copy.deepcopy(model)
        apply_masks(reference, masks)
        base_flops, base_params = flops_params(model, x)
        runs = {"nncore": [], "torch-pruning": []}
        for _ in range(args.repeats):  # alternate, so that load drift hits both alike; keep the median
            runs["nncore"].append(run_nncore(model, x, masks))
            runs["torch-pruning"].append(run_torch_pruning(model, x, 0.5))
        results = []
        for tool, attempts in runs.items():
            seconds = [s for _, s in attempts if s is not None]
            results.append((tool, attempts[-1][0], statistics.median(seconds) if seconds else None))
        results.append(("nni-2.10",) + (run_nni(model, x, masks) if not args.skip_nni else (None, None)))
        measured = [model] + [pruned for _, pruned, _ in results if pruned is not None]
        timings = iter(latencies_ms(measured, x, args.runs))
        base_latency = next(timings)
        for tool, pruned, seconds in results:
            if pruned is None:
                print(f"{name:<13}{tool:<14}{'skipped (not importable, failed or --skip-nni)':>60}")
                continue
            flops, params = flops_params(pruned, x)
            latency = next(timings)
            difference = "-" if tool == "torch-pruning" else f"{max_difference(pruned, reference, x):.1e}"
            print(f"{name:<13}{tool:<14}{base_params:>6.2f} ->{params:>6.2f}{base_flops:>6.2f} ->{flops:>6.2f}"
                  f"{base_latency:>7.1f} ->{latency:>7.1f}{seconds:>11.2f}{difference:>11}")


if __name__ == "__main__":
    main()
