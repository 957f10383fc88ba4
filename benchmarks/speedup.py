"""Model speedup, side by side: nncore vs Torch-Pruning vs NNI 2.10 (each skipped if missing).

    /work/tvenv/bin/python benchmarks/speedup.py [--models a,b] [--size 224] [--no-latency]
        [--runs 30] [--repeats 3] [--skip-nni]          (PYTHONPATH=<this checkout>)

Models: torchvision's (random weights) when torchvision is importable, else nncore's zoo
(``resnet18,resnet50,mobilenet_v2``). BatchNorm statistics and affine parameters are randomized
(seeded), as in a trained network: with torchvision's initialization every BatchNorm maps 0 to 0,
so no masked channel would ever become a (non-zero) constant.

For each network: masks of nncore's ``L1FilterPruner`` at 50% of every conv's filters with
``dependency_aware=True`` (coupled convs share one mask; the BatchNorm after each conv follows),
except the layer that produces the model output. nncore and NNI speed up those masks;
Torch-Pruning builds its dependency graph and prunes 50% of the channels with its own L1
criterion on the same layers (Linear layers and the output layer ignored). ``removed`` is nncore's removed /
masked filters; ``params`` the parameter count before -> after and the reduction; ``max diff``
the largest output difference to the masked model, relative to the output's scale (Torch-Pruning
has no masked model to compare with). Latency: batch 1, 2 threads, median of ``--runs`` runs.
Speedup time: seconds of the speedup call (Torch-Pruning: MetaPruner construction, i.e. its
DependencyGraph build, + ``step()``), all in this process, nncore and Torch-Pruning alternated
``--repeats`` times (median); NNI once.
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


TORCHVISION_MODELS = ("densenet121,efficientnet_b0,squeezenet1_1,regnet_y_400mf,mobilenet_v3_small,googlenet,"
                      "resnet18,resnet50,mobilenet_v2,shufflenet_v2_x1_0")


def builders() -> dict:
    """Model name -> constructor: torchvision's classification models if importable, else the zoo."""
    try:
        import torchvision.models as tvm
    except ImportError:
        return {"resnet18": resnet18, "resnet50": resnet50, "mobilenet_v2": mobilenet_v2}
    return {name: getattr(tvm, name) for name in tvm.list_models(module=tvm)}


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Trained-like BatchNorm layers: random statistics and affine parameters (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                if module.affine:
                    module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                    module.bias.copy_(torch.rand(n, generator=generator) - 0.5)
    return model


def output_layer(model: nn.Module) -> str:
    """The layer that produces the model output: the last Linear, or the last Conv2d if none."""
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linear[-1] if linear else [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)][-1]


def l1_filter_masks(model: nn.Module, dummy: torch.Tensor, ratio: float) -> dict:
    """Masks of nncore's L1FilterPruner, dependency-aware (BatchNorm followers included), on every
    conv but the output layer."""
    pruned = copy.deepcopy(model)
    config = [{"sparsity": ratio, "op_types": ["Conv2d"]}, {"exclude": True, "op_names": [output_layer(model)]}]
    pruner = L1FilterPruner(pruned, config, dependency_aware=True, dummy_input=dummy)
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
    speedup = ModelSpeedup(model, x, masks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        speedup.speedup_model()
    return model, time.perf_counter() - start, speedup.summary


def run_torch_pruning(model, x, ratio):
    try:
        import torch_pruning as tp
    except ImportError:
        return None, None
    model = copy.deepcopy(model)
    # the same layers as nncore's masks: every conv but the output layer (Linear layers are not pruned)
    ignored = [model.get_submodule(output_layer(model))] + [m for m in model.modules() if isinstance(m, nn.Linear)]
    start = time.perf_counter()
    try:
        pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=ratio, ignored_layers=ignored)
        pruner.step()
    except Exception as exc:  # Torch-Pruning fails on some models: report, don't stop
        print(f"  Torch-Pruning failed: {type(exc).__name__}: {exc}")
        return None, None, None
    return model, time.perf_counter() - start, None


def run_nni(model, x, masks):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from nni.compression.pytorch import ModelSpeedup as NNISpeedup
    except Exception:
        return None, None, None
    model = copy.deepcopy(model)
    start = time.perf_counter()
    try:
        NNISpeedup(model, x, masks).speedup_model()
    except Exception as exc:  # NNI fails on some models: report, don't stop
        print(f"  NNI failed: {type(exc).__name__}: {exc}")
        return None, None, None
    return model, time.perf_counter() - start, None


def relative_difference(model, reference, x) -> float:
    """Largest output difference to the masked model, relative to the largest output."""
    with torch.no_grad():
        expected = reference(x)
        return float((model(x) - expected).abs().max() / expected.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--skip-nni", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="speedup timings per tool (median)")
    parser.add_argument("--models", default=None, help="comma-separated names (default: a torchvision set, "
                        "or the zoo's resnet18,resnet50,mobilenet_v2 without torchvision)")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency and FLOPs columns")
    args = parser.parse_args()
    torch.set_num_threads(2)
    available = builders()
    names = args.models.split(",") if args.models else (
        TORCHVISION_MODELS.split(",") if "densenet121" in available else list(available))
    header = (f"{'model':<20}{'tool':<14}{'removed':>15}{'params M':>15}{'-%':>6}{'GFLOPs':>15}"
              f"{'latency ms':>17}{'speedup s':>11}{'max diff':>10}")
    print(header)
    print("-" * len(header))
    for name in names:
        torch.manual_seed(0)
        model = randomize_batchnorm(available[name]()).eval()
        x = torch.randn(1, 3, args.size, args.size)
        masks = l1_filter_masks(model, x, 0.5)
        reference = copy.deepcopy(model)
        apply_masks(reference, masks)
        base_params = sum(p.numel() for p in model.parameters()) / 1e6
        base_flops = float("nan") if args.no_latency else flops_params(model, x)[0]
        runs = {"nncore": [], "torch-pruning": []}
        for _ in range(args.repeats):  # alternate, so that load drift hits both alike; keep the median
            runs["nncore"].append(run_nncore(model, x, masks))
            runs["torch-pruning"].append(run_torch_pruning(model, x, 0.5))
        results = []
        for tool, attempts in runs.items():
            seconds = [s for _, s, _ in attempts if s is not None]
            results.append((tool, attempts[-1][0], statistics.median(seconds) if seconds else None, attempts[-1][2]))
        results.append(("nni-2.10",) + (run_nni(model, x, masks) if not args.skip_nni else (None, None, None)))
        measured = [model] + [pruned for _, pruned, _, _ in results if pruned is not None]
        timings = iter([float("nan")] * len(measured) if args.no_latency else latencies_ms(measured, x, args.runs))
        base_latency = next(timings)
        for tool, pruned, seconds, summary in results:
            if pruned is None:
                print(f"{name:<20}{tool:<14}{'skipped (not importable, failed or --skip-nni)':>60}")
                continue
            params = sum(p.numel() for p in pruned.parameters()) / 1e6
            flops = float("nan") if args.no_latency else flops_params(pruned, x)[0]
            latency = next(timings)
            removed = "-" if summary is None else \
                f"{summary.masked_filters - summary.kept_filters}/{summary.masked_filters}"
            difference = "-" if tool == "torch-pruning" else f"{relative_difference(pruned, reference, x):.1e}"
            print(f"{name:<20}{tool:<14}{removed:>15}{base_params:>6.2f} ->{params:>6.2f}"
                  f"{100 * (1 - params / base_params):>6.1f}{base_flops:>6.2f} ->{flops:>6.2f}"
                  f"{base_latency:>7.1f} ->{latency:>7.1f}{seconds:>11.2f}{difference:>10}", flush=True)


if __name__ == "__main__":
    main()
