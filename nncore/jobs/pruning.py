"""Building a registered pruner for a job, pruning and fine-tuning."""
from __future__ import annotations

import argparse
import importlib.util
import inspect
from typing import Any, Iterable

import torch.nn as nn
import torch

from nncore.cli import CommandLineError
from nncore.data import JobData, train_epochs
from nncore.jobs.baseline import dummy_input


def pruner_class(algo: str) -> type:
    """The registered pruner class ``algo``, or a one-line error (unknown name, or not a pruner)."""
    from nncore.registry import get_compressor

    found = get_compressor(algo)
    if getattr(found, "kind", "") != "pruner":
        raise CommandLineError(f"--algo {algo!r} is a {found.kind or 'compressor'}, not a pruner "
                               "(quantize with --quantize)")
    return found


def make_pruner(algo: str, model: nn.Module, config_list: Any, example_input: torch.Tensor,
                notes: list[str] | None = None) -> Any:
    """Build the pruner ``algo`` on ``model``: dependency-aware when the algorithm supports it.

    :raises CommandLineError: ``algo`` is not a pruner, or needs constructor arguments a job cannot give.
    """
    found = pruner_class(algo)
    parameters = inspect.signature(found.__init__).parameters
    kwargs: dict[str, Any] = {}
    if "dummy_input" in parameters:
        kwargs["dummy_input"] = example_input
    if "dependency_aware" in parameters:
        if importlib.util.find_spec("nncore.utils.dependency") is not None:
            kwargs["dependency_aware"] = True
        elif notes is not None:
            notes.append("dependency-aware pruning unavailable (nncore.utils.dependency not installed)")
    try:
        return found(model, config_list, **kwargs)
    except TypeError as exc:
        raise CommandLineError(f"--algo {algo!r} cannot be built by a job: {exc}") from exc


def default_config_list(sparsity: float) -> list[dict[str, Any]]:
    """Uniform pruning of the algorithm's default layers."""
    return [{"sparsity": sparsity, "op_types": ["default"]}]


def layer_sparsity(masks: dict[str, dict[str, Any]], layers: Iterable[str]) -> dict[str, float]:
    """Fraction of zero weights in each named layer's mask."""
    return {name: round(float((masks[name]["weight"] == 0).float().mean()), 4) for name in layers if name in masks}


def prune_and_finetune(model: nn.Module, data: JobData, args: argparse.Namespace, config_list: Any,
                       notes: list[str], verbose: bool) -> tuple[dict[str, Any], dict[str, float]]:
    """Prune ``model`` in place, fine-tune with the masks kept, unwrap; returns (masks, per-layer sparsity)."""
    pruner = make_pruner(args.algo, model, config_list, dummy_input(data), notes)
    pruner.compress()
    train_epochs(model, data.train_loader, args.finetune_epochs, lr=args.lr / 4, progress="fine-tuning",
                 on_epoch=pruner.update_epoch, on_step=pruner.step, verbose=verbose)
    pruner.apply_masks()
    masks = pruner.masks()
    sparsity = layer_sparsity(masks, pruner.wrappers)
    pruner.unwrap_model()
    return masks, sparsity
