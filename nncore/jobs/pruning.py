"""A registered pruner in a job: checked before any training, built with what it asks for,
then fine-tuned (epoch by epoch, or round by round for iterative pruners)."""
from __future__ import annotations

import copy
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from nncore.cli import CommandLineError
from nncore.data import train_epochs
from nncore.errors import ConfigError
from nncore.jobs.options import say
from nncore.jobs.supplies import JobSupplies, check_needs, declared, epochs_per_round, rounds_of

ONE_SHOT_SUPPLIES = ("dummy_input", "dependency_aware")
"""What a job that prunes many copies (``nncore auto``, the cost of a config) gives a pruner."""


def pruner_class(algo: str) -> type:
    """The registered pruner class ``algo``, or a one-line error (unknown name, or not a pruner)."""
    from nncore.registry import get_compressor

    found = get_compressor(algo)
    if getattr(found, "kind", "") != "pruner":
        raise CommandLineError(f"--algo {algo!r} is a {found.kind or 'compressor'}, not a pruner "
                               "(quantize with --quantize)")
    return found


def check_pruner(algo: str, model: nn.Module, config_list: Any, *, config_file: str | None = None,
                 sparsity: float | None = None, one_shot: bool = False) -> type:
    """The pruner class ``algo`` once the job can build it on ``model`` with ``config_list``.

    Checks, without touching the model: the algorithm is a pruner, the job supplies everything it
    needs (``one_shot``: only :data:`ONE_SHOT_SUPPLIES`), and ``config_list`` is valid for it on
    ``model``.

    :param config_file: the ``--config`` file the list came from; its problems are then listed
        (a :class:`ConfigError`), else they are one line about ``--algo`` / ``--sparsity``.
    :raises CommandLineError: or :class:`ConfigError`, as above.
    """
    cls = pruner_class(algo)
    check_needs(cls, f"--algo {algo!r}")
    if one_shot and not is_one_shot(cls):
        extra = sorted(set(declared(cls, "job_arguments").values()) - set(ONE_SHOT_SUPPLIES))
        raise CommandLineError(f"--algo {algo!r}: {cls.__name__} needs {', '.join(extra)}; nncore auto prunes "
                               "one copy per trial and takes one-shot pruners only (e.g. l1, l2, fpgm, level)")
    try:
        cls.check_config(model, config_list)
    except ConfigError as exc:
        if config_file is not None:
            header = f"--config {config_file}: invalid config_list for {cls.__name__}"
            raise ConfigError(exc.errors, header=header) from exc
        setting = "" if sparsity is None else f" at --sparsity {sparsity}"
        raise CommandLineError(f"--algo {algo!r} cannot prune {type(model).__name__}{setting}: "
                               + "; ".join(exc.errors)) from exc
    return cls


def check_construction(algo: str, model: nn.Module, config_list: Any, supplies_for: Callable[[nn.Module], JobSupplies]
                       ) -> None:
    """Build the pruner once on a copy of ``model`` with the job's supplies (``supplies_for(copy)``),
    so that an argument its constructor refuses (a budget it cannot meet, ...) stops the job before
    training; the copy is dropped.

    :raises CommandLineError: one line with the constructor's problems.
    """
    cls = pruner_class(algo)
    probe = copy.deepcopy(model)
    try:
        cls(probe, copy.deepcopy(config_list), **supplies_for(probe).arguments(cls))
    except ConfigError as exc:
        raise CommandLineError(f"--algo {algo!r} cannot prune {type(model).__name__}: {cls.__name__}: "
                               + "; ".join(exc.errors)) from exc


def make_pruner(algo: str, model: nn.Module, config_list: Any, example_input: Any,
                supplies: JobSupplies | None = None) -> Any:
    """Build the pruner ``algo`` on ``model`` with the arguments its ``job_arguments`` ask for.

    Without ``supplies`` only :data:`ONE_SHOT_SUPPLIES` are given (``dummy_input`` is
    ``example_input``; pruning is dependency-aware where the algorithm supports it).

    :raises CommandLineError: ``algo`` is not a pruner, or needs what is not supplied.
    """
    cls = pruner_class(algo)
    check_needs(cls, f"--algo {algo!r}")
    if supplies is not None:
        return cls(model, config_list, **supplies.arguments(cls))
    if not is_one_shot(cls):
        extra = sorted(set(declared(cls, "job_arguments").values()) - set(ONE_SHOT_SUPPLIES))
        raise CommandLineError(f"--algo {algo!r}: {cls.__name__} needs {', '.join(extra)}, which only nncore compress "
                               "supplies")
    return cls(model, config_list, **one_shot_arguments(cls, example_input))


def is_one_shot(cls: type) -> bool:
    """Whether ``cls`` asks a job for nothing but :data:`ONE_SHOT_SUPPLIES`."""
    return set(declared(cls, "job_arguments").values()) <= set(ONE_SHOT_SUPPLIES)


def one_shot_arguments(cls: type, example_input: Any) -> dict[str, Any]:
    """The constructor arguments of a one-shot pruner: ``example_input`` as its dummy input,
    dependency-aware where it can be."""
    values = {"dummy_input": example_input, "dependency_aware": True}
    return {parameter: values[name] for parameter, name in declared(cls, "job_arguments").items()}


def layer_sparsity(masks: dict[str, dict[str, Any]], layers: Iterable[str]) -> dict[str, float]:
    """Fraction of zero weights in each named layer's mask."""
    return {name: round(float((masks[name]["weight"] == 0).float().mean()), 4) for name in layers if name in masks}


def finetune(pruner: Any, model: nn.Module, supplies: JobSupplies, epochs: int, verbose: bool) -> None:
    """Fine-tune the pruned ``model`` with the job's optimizer, masks kept.

    An iterative pruner (``get_prune_iterations``) gets its rounds, ``epochs`` shared out over them;
    any other gets ``update_epoch(epoch)`` before each epoch. ``step()`` follows every batch.
    """
    loader = supplies.data.train_loader
    rounds = rounds_of(pruner)
    if rounds is None:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(supplies.optimizer, T_max=max(epochs, 1))
        train_epochs(model, loader, epochs, optimizer=supplies.optimizer, scheduler=scheduler,
                     on_epoch=pruner.update_epoch, on_step=pruner.step, progress="fine-tuning", verbose=verbose)
        return
    per_round = epochs_per_round(epochs, len(rounds))
    for index in rounds:  # the pruner rewinds the optimizer each round: a constant learning rate
        pruner.prune_iteration_start()
        train_epochs(model, loader, per_round, optimizer=supplies.optimizer, on_step=pruner.step,
                     progress=f"fine-tuning, round {index + 1}/{len(rounds)}", verbose=verbose)


def prune_and_finetune(algo: str, model: nn.Module, config_list: Any, supplies: JobSupplies, epochs: int,
                       verbose: bool) -> tuple[dict[str, Any], dict[str, float]]:
    """Prune ``model`` in place, fine-tune with the masks kept, unwrap; returns (masks, per-layer sparsity)."""
    pruner = make_pruner(algo, model, config_list, None, supplies)
    say(verbose, f"pruning: {type(pruner).__name__}")
    pruner.compress()
    finetune(pruner, model, supplies, epochs, verbose)
    pruner.apply_masks()
    masks = pruner.masks()
    sparsity = layer_sparsity(masks, pruner.wrappers)
    pruner.unwrap_model()
    model.eval()
    return masks, sparsity
