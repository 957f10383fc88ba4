"""Helpers the benchmark scripts share (import them as ``from bench_utils import ...``: the scripts
run as ``python benchmarks/NAME.py``, which puts this folder on the path)."""
from __future__ import annotations

import os
import random

import numpy as np
import torch
from torch import nn


def seed_everything(seed: int = 0) -> None:
    """Seed Python's, NumPy's and torch's random generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_average() -> str:
    """The machine's load, to print beside every table (the machine is shared)."""
    return "load average %.1f %.1f %.1f (%d CPUs)" % (*os.getloadavg(), os.cpu_count())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
