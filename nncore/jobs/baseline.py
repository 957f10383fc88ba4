"""The trained baseline of a job (cached between runs) and the checks that model and data fit."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from nncore.artifacts import load_torch, save_torch
from nncore.cli import CommandLineError
from nncore.data import JobData, train_epochs
from nncore.errors import NncoreError
from nncore.jobs.options import say


def cache_dir() -> Path:
    """Where trained baselines are kept: ``$NNCORE_CACHE`` or ``~/.cache/nncore``."""
    return Path(os.environ.get("NNCORE_CACHE") or Path.home() / ".cache" / "nncore")


def baseline_key(model: nn.Module, model_spec: str | None, data_spec: str | None, epochs: int, lr: float,
                 seed: int, batch_size: int) -> str:
    """A hash of what determines a trained baseline: model (spec, class, shapes), data, budget, seed."""
    shapes = [[name, list(value.shape)] for name, value in model.state_dict().items()]
    recipe = {"model": model_spec or "nncore.zoo:DigitsCNN", "class": type(model).__qualname__, "shapes": shapes,
              "data": data_spec or "digits", "epochs": epochs, "lr": lr, "seed": seed,
              "batch_size": batch_size}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:20]


def trained_baseline(model: nn.Module, data: JobData, *, model_spec: str | None, data_spec: str | None, epochs: int,
                     lr: float, seed: int, use_cache: bool = True, verbose: bool = True) -> nn.Module:
    """Train ``model`` in place for ``epochs`` epochs, or load the cached result of the same recipe."""
    batch_size = getattr(data.train_loader, "batch_size", None) or 0
    path = cache_dir() / f"baseline-{baseline_key(model, model_spec, data_spec, epochs, lr, seed, batch_size)}.pt"
    if use_cache and path.is_file():
        try:
            model.load_state_dict(load_torch(path, "cached baseline"))
            say(verbose, f"baseline: loaded from cache {path}")
            model.eval()
            return model
        except (NncoreError, RuntimeError) as exc:
            say(verbose, f"baseline: ignoring unreadable cache entry ({exc})")
    cached = f" (cached in {path.parent}/ for the next run)" if use_cache else ""
    say(verbose, f"baseline: training {epochs} epoch(s){cached}")
    torch.manual_seed(seed)
    train_epochs(model, data.train_loader, epochs, lr=lr, progress="baseline training", verbose=verbose)
    if use_cache:
        save_torch(model.state_dict(), path)
    return model


def dummy_input(data: JobData) -> torch.Tensor:
    """A batch of one zero input of the data's shape."""
    return torch.zeros(data.input_shape)


def check_forward(model: nn.Module, data: JobData, model_spec: str | None) -> None:
    """Fail with one line when the model cannot run on the data's inputs."""
    try:
        with torch.no_grad():
            model.eval()(dummy_input(data))
    except Exception as exc:
        raise CommandLineError(f"--model {model_spec or 'DigitsCNN'!r}: forward on an input of shape "
                               f"{tuple(data.input_shape)} failed: {type(exc).__name__}: {exc}") from exc
