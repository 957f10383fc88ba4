"""What a job gives an algorithm: the values a compressor class asks for by name.

A compressor class (built-in or third-party) declares what it needs from ``nncore compress`` with
two class attributes, and the job supplies exactly that, whatever the algorithm:

``job_arguments``
    ``{constructor parameter: supply}``: keyword arguments the job passes to the constructor.
    A required constructor parameter missing here makes the job stop, before any training,
    with a one-line error naming it.
``job_config``
    ``{config key: supply}``: the keys of the config_list entry the job builds from
    ``--sparsity`` (``op_types: ['default']`` is added). Pruners default to
    ``{"sparsity": "sparsity"}``. A user's ``--config`` file replaces this entry.

The supplies are the keys of :data:`SUPPLIES`; the numbers among them (:data:`SCHEDULE`) scale
with the job's ``--finetune-epochs``, so a short job is short for every algorithm.

>>> class MyPruner(Pruner):
...     name = "mine"
...     job_arguments = {"trainer": "trainer", "evaluator": "evaluator", "iterations": "pruning_rounds"}

An algorithm that cannot prune the model at all (say, attention heads in a CNN) says so through
its ``default_op_types`` / ``supported_op_types`` / ``validate_config``: the job checks the
config_list against the model before training and stops with that message on one line.
A pruner with ``get_prune_iterations()`` / ``prune_iteration_start()`` (NNI's iterative
protocol, e.g. ``lottery``) is fine-tuned round by round, the fine-tuning epochs shared out.
"""
from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from nncore.cli import CommandLineError
from nncore.data import JobData, accuracy, train_one_epoch

PRUNING_ROUNDS = 3
SCHEDULE: Mapping[str, str] = {
    "sparsity": "--sparsity",
    "pruning_epochs": "epochs over which a scheduled pruner reaches its sparsity (or trains per round): half "
                      "the fine-tuning epochs, at least 1; the rest fine-tunes at the final sparsity",
    "pruning_rounds": f"rounds of an iterative or search pruner ({PRUNING_ROUNDS}); the fine-tuning epochs "
                      "are shared out over the rounds of a pruner with get_prune_iterations()",
    "kept_fraction": "1 - --sparsity, for a pruner whose budget is the fraction of the model it keeps",
    "search_steps": "episodes or trials of a search pruner: four per fine-tuning epoch, at least 4",
    "search_warmup": "the first half of search_steps, e.g. random exploration before a search learns",
}
SUPPLIES: Mapping[str, str] = {
    "dummy_input": "a zero input of the data's shape, batch of one",
    "dependency_aware": "True: prune coupled channels together so that speedup can remove them",
    "optimizer": "the Adam optimizer the job then fine-tunes with (this very object)",
    "criterion": "the loss, cross-entropy",
    "trainer": "trainer(model, optimizer, criterion, epoch, callback=None): one epoch on the training data; "
               "callback() runs between loss.backward() and optimizer.step()",
    "finetuner": "finetuner(model): one epoch of fine-tuning (Adam) on the training data",
    "evaluator": "evaluator(model) -> float: accuracy on the test data, higher is better",
    "loader_evaluator": "evaluator(loader, model) -> float: accuracy in percent over loader (NNI's AMC contract)",
    "calibration_data": "the training data loader, batches of (inputs, labels); a quantizer that asks for it is "
                        "calibrated, not fine-tuned",
    "test_data": "the test data loader, batches of (inputs, labels)",
    "output_dir": "the job's --output folder, for the algorithm's own files",
    "seed": "the job's --seed",
    "verbose": "False under --quiet, else True",
    **SCHEDULE,
}


def schedule(sparsity: float, finetune_epochs: int) -> dict[str, Any]:
    """The values of :data:`SCHEDULE` for a job."""
    steps = max(4, 4 * finetune_epochs)
    return {"sparsity": sparsity, "pruning_epochs": max(1, finetune_epochs // 2), "pruning_rounds": PRUNING_ROUNDS,
            "kept_fraction": round(1 - sparsity, 6), "search_steps": steps, "search_warmup": steps // 2}


def declared(cls: type, attribute: str) -> dict[str, str]:
    """``cls.job_arguments`` or ``cls.job_config`` as a dict (empty when not declared)."""
    return dict(getattr(cls, attribute, None) or {})


def check_needs(cls: type, option: str) -> None:
    """Stop with one line when the job cannot build ``cls``: an unknown supply or value name, or a
    required constructor parameter nobody supplies.

    :param option: how the user named the algorithm, e.g. ``"--algo 'admm'"``.
    """
    arguments, config = declared(cls, "job_arguments"), declared(cls, "job_config")
    unknown = [f"{name!r}" for name in [*arguments.values(), *config.values()] if name not in SUPPLIES]
    if unknown:
        raise CommandLineError(f"{option}: {cls.__name__} asks a job for {', '.join(unknown)}, which a job does not "
                               f"supply (it supplies {', '.join(SUPPLIES)})")
    parameters = list(inspect.signature(cls.__init__).parameters.values())[3:]  # self, model, config_list
    missing = [p.name for p in parameters if p.default is inspect.Parameter.empty
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in arguments]
    if missing:
        raise CommandLineError(f"{option}: {cls.__name__} needs {', '.join(map(repr, missing))}, which it does not "
                               "ask a job for (declare them in its job_arguments; see nncore.jobs.supplies)")


def job_config_list(cls: type, sparsity: float, finetune_epochs: int) -> list[dict[str, Any]]:
    """The uniform config_list of ``cls`` at ``sparsity`` on its default layers (see ``job_config``)."""
    values = schedule(sparsity, finetune_epochs)
    return [{**{key: values[name] for key, name in declared(cls, "job_config").items()}, "op_types": ["default"]}]


class JobSupplies:
    """The values of :data:`SUPPLIES` for one model: built on first use, the same object after.

    :param model: the model the algorithm will compress (the optimizer trains its parameters).
    :param data: the job's data.
    :param lr: the learning rate of the optimizer (and of the trainer / fine-tuner).
    :param output: the job's output folder.
    :param sparsity: ``--sparsity``; with ``finetune_epochs``, gives the :data:`SCHEDULE` values.
    """

    def __init__(self, model: nn.Module, data: JobData, *, lr: float, output: Path, seed: int, verbose: bool,
                 sparsity: float = 0.0, finetune_epochs: int = 0) -> None:
        self.model, self.data, self.lr, self.output, self.seed, self.verbose = model, data, lr, output, seed, verbose
        self._made: dict[str, Any] = schedule(sparsity, finetune_epochs)

    def arguments(self, cls: type) -> dict[str, Any]:
        """The keyword arguments ``cls`` asks for in its ``job_arguments``."""
        return {parameter: self.value(name) for parameter, name in declared(cls, "job_arguments").items()}

    def value(self, name: str) -> Any:
        """The supply ``name`` (see :data:`SUPPLIES`)."""
        if name not in self._made:
            self._made[name] = getattr(self, f"_make_{name}")()
        return self._made[name]

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer the job fine-tunes with (the one passed to algorithms that ask for it)."""
        return self.value("optimizer")

    def _make_dummy_input(self) -> torch.Tensor:
        return torch.zeros(self.data.input_shape)

    def _make_dependency_aware(self) -> bool:
        return True

    def _make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.lr)

    def _make_criterion(self) -> nn.Module:
        return nn.CrossEntropyLoss()

    def _make_trainer(self) -> Callable[..., float]:
        loader = self.data.train_loader

        def trainer(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: Any = None, epoch: int = 0,
                    callback: Callable[[], None] | None = None) -> float:
            return train_one_epoch(model, loader, optimizer, criterion, callback=callback)

        return trainer

    def _make_finetuner(self) -> Callable[[nn.Module], float]:
        loader, lr = self.data.train_loader, self.lr

        def finetuner(model: nn.Module) -> float:
            loss = train_one_epoch(model, loader, torch.optim.Adam(model.parameters(), lr=lr))
            model.eval()
            return loss

        return finetuner

    def _make_evaluator(self) -> Callable[[nn.Module], float]:
        loader = self.data.test_loader
        return lambda model: accuracy(model, loader)

    def _make_calibration_data(self) -> Any:
        return self.data.train_loader

    def _make_test_data(self) -> Any:
        return self.data.test_loader

    def _make_loader_evaluator(self) -> Callable[[Any, nn.Module], float]:
        return lambda loader, model: 100.0 * accuracy(model, loader)

    def _make_output_dir(self) -> str:
        return str(self.output)

    def _make_seed(self) -> int:
        return self.seed

    def _make_verbose(self) -> bool:
        return self.verbose


def rounds_of(pruner: Any) -> list[int] | None:
    """The rounds of an iterative pruner (``get_prune_iterations()``), or ``None``."""
    rounds = getattr(pruner, "get_prune_iterations", None)
    return list(rounds()) if callable(rounds) and callable(getattr(pruner, "prune_iteration_start", None)) else None


def epochs_per_round(epochs: int, rounds: int) -> int:
    """The fine-tuning epochs shared out over ``rounds`` (rounded up)."""
    return math.ceil(epochs / rounds) if rounds else epochs
