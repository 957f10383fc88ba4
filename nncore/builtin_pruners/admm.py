"""ADMMPruner: weight pruning by the alternating direction method of multipliers (Zhang et al., 2018).

The constrained problem ``min loss(W) s.t. W_i is sparse`` is split in two, solved in turn for
``num_iterations`` rounds:

1. ``training_epochs`` epochs of the user's trainer on ``loss(W) + row/2 * sum ||W_i - Z_i + U_i||^2``:
   the trainer calls ``callback()`` after ``loss.backward()``, which adds the proximal gradient
   ``row * (W_i - Z_i + U_i)`` to each weight's gradient;
2. ``Z_i = projection(W_i + U_i)`` (the base pruner's mask at layer ``i``'s sparsity: whole
   filters for ``'l1'``, single weights for ``'level'``), then ``U_i += W_i - Z_i``.

Finally the base pruner masks the trained weights at each layer's sparsity.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from nncore.builtin_pruners.search_base import (
    SearchPruner,
    base_config_list,
    callable_error,
    number_error,
    probe_masks,
    progress,
    raise_argument_errors,
    resolve_base_algo,
)
from nncore.compressor import Pruner
from nncore.config import FRACTION
from nncore.errors import ConfigError, PluginError
from nncore.hookspecs import hookimpl
from nncore.wrapper import ModuleWrapper

Trainer = Callable[..., Any]


def admm_errors(trainer: Any, num_iterations: Any, training_epochs: Any, row: Any, prefix: str = "") -> list[str]:
    """Messages for ADMM arguments that are wrong (``prefix`` prefixes the iteration arguments' names)."""
    errors = callable_error(trainer, "trainer")
    errors += number_error(num_iterations, f"{prefix}num_iterations", low=1, integer=True)
    errors += number_error(training_epochs, f"{prefix}training_epochs", low=1, integer=True)
    errors += number_error(row, "row", low=0)
    return errors


@torch.no_grad()
def project(pruner: Pruner, wrapper: ModuleWrapper, tensor: torch.Tensor, sparsity: float) -> torch.Tensor:
    """``tensor`` masked as ``pruner`` would mask the layer if its weight were ``tensor``."""
    weight = wrapper.module.weight
    saved = weight.detach().clone()
    weight.copy_(tensor)
    try:
        masks = probe_masks(pruner, wrapper, sparsity)
    finally:
        weight.copy_(saved)
    if masks is None:
        raise PluginError(f"{type(pruner).__name__} gave no mask for layer {wrapper.name!r}")
    return tensor * masks["weight_mask"]


def admm_optimize(model: nn.Module, pruner: Pruner, sparsities: Mapping[str, float], trainer: Trainer, *,
                  num_iterations: int, training_epochs: int, row: float, verbose: bool) -> list[dict[str, Any]]:
    """Run ADMM on ``model`` whose layers ``sparsities`` are wrapped in ``pruner.wrappers``.

    Trains with Adam (lr 1e-3, weight decay 5e-5) and cross-entropy, as NNI does; masks already
    set on the wrappers stay in effect. Returns, per iteration, each layer's relative distance
    ``||W - Z|| / ||W||`` to its projection.
    """
    wrappers = [pruner.wrappers[name] for name in sparsities]
    z = [w.module.weight.detach().clone() for w in wrappers]
    u = [torch.zeros_like(zi) for zi in z]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-5)
    criterion = nn.CrossEntropyLoss()

    def callback() -> None:
        with torch.no_grad():
            for wrapper, zi, ui in zip(wrappers, z, u):
                weight = wrapper.module.weight
                proximal = row * (weight - zi + ui)
                weight.grad = proximal if weight.grad is None else weight.grad + proximal

    residuals = []
    bar = progress(num_iterations * training_epochs, "ADMM (epochs)", verbose)
    for iteration in range(num_iterations):
        for epoch in range(training_epochs):
            trainer(model, optimizer=optimizer, criterion=criterion, epoch=epoch, callback=callback)
            bar.update()
        distances = {}
        with torch.no_grad():
            for index, wrapper in enumerate(wrappers):
                weight = wrapper.module.weight
                z[index] = project(pruner, wrapper, weight + u[index], sparsities[wrapper.name])
                u[index] = u[index] + weight - z[index]
                distances[wrapper.name] = float((weight - z[index]).norm() / weight.norm().clamp_min(1e-12))
        residuals.append({"iteration": iteration, "residual": distances})
        bar.set_postfix(residual=f"{max(distances.values(), default=0.0):.3g}")
    bar.close()
    return residuals


class ADMMPruner(Pruner):
    """Trains the model towards sparse weights with ADMM, then masks it with ``base_algo``.

    ``config_list`` key ``sparsity``: the fraction of each selected layer's weights to prune
    (``'l1'`` prunes whole filters, so filter counts round it).

    :param model: the model to prune (trained in place by ``compress()``).
    :param config_list: see above.
    :param trainer: ``trainer(model, optimizer, criterion, epoch, callback)`` trains one epoch
        and calls ``callback()`` between ``loss.backward()`` and ``optimizer.step()``.
    :param num_iterations: ADMM iterations.
    :param training_epochs: epochs of training per iteration.
    :param row: the ADMM penalty ``rho``.
    :param base_algo: registry name of the pruner that gives the projection and the final masks.
    :param verbose: show a progress bar.
    :raises ConfigError: a bad argument or ``config_list``; the model is untouched.
    """

    name: ClassVar[str] = "admm"
    job_arguments: ClassVar[Mapping[str, str]] = {"trainer": "trainer", "num_iterations": "pruning_rounds",
                                                  "training_epochs": "pruning_epochs", "verbose": "verbose"}
    config_schema: ClassVar[dict[str, Any]] = {
        "properties": {"sparsity": {**FRACTION, "exclusiveMaximum": 1,
                                    "description": "Fraction of each layer's weights to prune."}},
        "required": ["sparsity"],
    }

    def __init__(
        self,
        model: nn.Module,
        config_list: Sequence[dict[str, Any]],
        trainer: Trainer,
        num_iterations: int = 30,
        training_epochs: int = 5,
        row: float = 1e-4,
        base_algo: str = "l1",
        *,
        verbose: bool = True,
        plugins: Iterable[Any] = (),
    ):
        errors = admm_errors(trainer, num_iterations, training_epochs, row)
        self.base_algorithm = resolve_base_algo(base_algo, errors)
        raise_argument_errors(errors, "ADMMPruner")
        self.trainer = trainer
        self.num_iterations = num_iterations
        self.training_epochs = training_epochs
        self.row = row
        self.base_algo = base_algo
        self.verbose = verbose
        self.default_op_types = self.base_algorithm.default_op_types
        super().__init__(model, config_list, plugins=plugins)
        names = [config.name for config in self.layer_configs]
        try:
            self.algorithm = self.base_algorithm(model, base_config_list(names))
        except ConfigError as exc:
            raise ConfigError(exc.errors, header=f"base_algo {base_algo!r} cannot prune the selected layers") from exc
        self.history: list[dict[str, Any]] = []

    unsupported_reason = SearchPruner.unsupported_reason

    def after_wrap(self) -> None:
        """Run ADMM on the wrapped (not yet masked) model; ``compress()`` then sets the masks."""
        self.algorithm.wrappers = self.wrappers
        self.algorithm.followers = self.followers
        self.algorithm.after_wrap()
        sparsities = {name: wrapper.config["sparsity"] for name, wrapper in self.wrappers.items()}
        self.history = admm_optimize(
            self.bound_model, self.algorithm, sparsities, self.trainer, num_iterations=self.num_iterations,
            training_epochs=self.training_epochs, row=self.row, verbose=self.verbose,
        )

    @hookimpl(trylast=True)
    def calc_mask(self, wrapper: ModuleWrapper, sparsity: float) -> dict[str, torch.Tensor | None] | None:
        return self.algorithm.hook.calc_mask(compressor=self.algorithm, wrapper=wrapper, sparsity=sparsity)


@hookimpl
def register_compressors() -> list[type]:
    return [ADMMPruner]
