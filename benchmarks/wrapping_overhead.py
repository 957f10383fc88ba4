"""Training-step time of a small CNN with LevelPruner masks in place vs. the unwrapped model.

Both models are stepped alternately in one process (interleaved rounds, median of many steps),
so machine noise hits both alike. Target: masked / plain <= 1.10.

    python benchmarks/wrapping_overhead.py [--steps 200] [--batch 64] [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn as nn

from nncore.builtin_pruners import LevelPruner


def small_cnn() -> nn.Module:
    """A CIFAR-style small CNN: 4 conv-BN-ReLU layers and a classifier."""
    layers, channels = [], 3
    for width in (32, 32, 64, 64):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))


def step_time(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plain = small_cnn()
    masked = copy.deepcopy(plain)
    LevelPruner(masked, [{"sparsity": 0.8, "op_types": ["default"]}]).compress()
    optimizers = {
        "plain": (plain, torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)),
        "masked": (masked, torch.optim.SGD(masked.parameters(), lr=0.01, momentum=0.9)),
    }
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for round_index in range(args.steps + 10):
        order = list(optimizers) if round_index % 2 == 0 else list(reversed(optimizers))
        for name in order:
            elapsed = step_time(*optimizers[name], x, y)
            if round_index >= 10:  # warm-up rounds are not counted
                times[name].append(elapsed)
    medians = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    ratio = medians["masked"] / medians["plain"]
    print(f"small CNN, batch {args.batch}, {args.threads} threads, median of {args.steps} interleaved steps")
    print(f"| model | step ms (median) |\n|---|---|")
    for name, value in medians.items():
        print(f"| {name} | {value:.2f} |")
    print(f"ratio masked/plain: {ratio:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
