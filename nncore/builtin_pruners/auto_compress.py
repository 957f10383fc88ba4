"""AutoCompressPruner: simulated annealing + ADMM, round after round (Liu et al., 2020).

Round ``r`` of ``num_iterations`` raises the overall sparsity to ``1-(1-P)^(r/n)``: simulated
annealing chooses how many more units (filters for ``'l1'``) each layer loses, ADMM trains the
weights towards that choice, and the base pruner masks the trained weights. Units pruned in
earlier rounds stay pruned. NNI speeds the model up between rounds; here the rounds work on
masks, so the model keeps its shape and ``compress()`` leaves its masks in effect;
:meth:`AutoCompressPruner.speedup_model` then gives the truly smaller model.
"""
from __future__ import annotations

import copy
import random
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import attrs
import torch
import torch.nn as nn

from nncore.builtin_pruners.admm import Trainer, admm_errors, admm_optimize
from nncore.builtin_pruners.search_base import (
    MaskedCopy,
    SearchPruner,
    callable_error,
    count_evaluator,
    layer_sparsities,
    number_error,
    overall_sparsity,
    target_weights,
)
from nncore.builtin_pruners.simulated_annealing import Annealer, AnnealingSchedule, schedule_errors
from nncore.compressor import set_submodule
from nncore.errors import NncoreError
from nncore.hookspecs import hookimpl


def round_sparsity(final_sparsity: float, rounds: int, round_index: int) -> float:
    """The overall sparsity after round ``round_index`` (1-based) of ``rounds``."""
    return 1.0 - (1.0 - final_sparsity) ** (round_index / rounds)


class AutoCompressPruner(SearchPruner):
    """Per round: simulated annealing picks per-layer sparsities, ADMM trains towards them.

    ``config_list`` key ``sparsity``: the overall fraction of the weights of the selected layers
    to prune. Works on a copy of the model; the model receives the trained weights and final
    masks. The history (annealing steps and the score after each round) is written to
    ``experiment_data_dir/search_history.json``, the result to ``search_result.json``.

    :param model: the model to prune.
    :param config_list: see above.
    :param trainer: ``trainer(model, optimizer, criterion, epoch, callback)``, see :class:`ADMMPruner`.
    :param evaluator: ``evaluator(model) -> float``, e.g. the validation accuracy.
    :param dummy_input: an input of the model, for :meth:`speedup_model` (the rounds themselves
        work on masks).
    :param num_iterations: rounds of annealing + ADMM.
    :param optimize_mode: ``'maximize'`` or ``'minimize'`` the evaluator's score.
    :param base_algo: registry name of the pruner that turns sparsities into masks.
    :param start_temperature: see :class:`SimulatedAnnealingPruner` (also the three below).
    :param stop_temperature: -
    :param cool_down_rate: -
    :param perturbation_magnitude: -
    :param admm_num_iterations: ADMM iterations per round.
    :param admm_training_epochs: training epochs per ADMM iteration.
    :param row: the ADMM penalty ``rho``.
    :param experiment_data_dir: where the JSON files go.
    :param seed: seed of the annealing's random generator (``None``: not seeded).
    :param verbose: show progress bars.
    :raises ConfigError: a bad argument or ``config_list``; the model is untouched.
    """

    name: ClassVar[str] = "auto_compress"
    job_arguments: ClassVar[Mapping[str, str]] = {
        "trainer": "trainer", "evaluator": "evaluator", "dummy_input": "dummy_input", "num_iterations": "pruning_rounds",
        "admm_num_iterations": "pruning_rounds", "admm_training_epochs": "pruning_epochs",
        "experiment_data_dir": "output_dir", "seed": "seed", "verbose": "verbose",
    }

    def __init__(
        self,
        model: nn.Module,
        config_list: Sequence[dict[str, Any]],
        trainer: Trainer,
        evaluator: Callable[[nn.Module], float],
        dummy_input: torch.Tensor,
        num_iterations: int = 3,
        optimize_mode: str = "maximize",
        base_algo: str = "l1",
        start_temperature: float = 100,
        stop_temperature: float = 20,
        cool_down_rate: float = 0.9,
        perturbation_magnitude: float = 0.35,
        admm_num_iterations: int = 30,
        admm_training_epochs: int = 5,
        row: float = 1e-4,
        experiment_data_dir: str = "./",
        *,
        seed: int | None = None,
        verbose: bool = True,
        plugins: Iterable[Any] = (),
    ):
        errors = callable_error(evaluator, "evaluator")
        errors += admm_errors(trainer, admm_num_iterations, admm_training_epochs, row, prefix="admm_")
        errors += number_error(num_iterations, "num_iterations", low=1, integer=True)
        errors += schedule_errors(start_temperature, stop_temperature, cool_down_rate, perturbation_magnitude)
        if not isinstance(dummy_input, (torch.Tensor, tuple)):
            errors.append(f"dummy_input: must be a tensor (or a tuple of tensors), got {type(dummy_input).__name__}")
        self.trainer, self.evaluator, self.dummy_input = trainer, evaluator, dummy_input
        self.num_iterations = num_iterations
        self.admm_options = {"num_iterations": admm_num_iterations, "training_epochs": admm_training_epochs, "row": row}
        if not errors:
            self.schedule = AnnealingSchedule(start_temperature, stop_temperature, cool_down_rate, perturbation_magnitude)
        self.rng = random.Random(seed)
        super().__init__(model, config_list, errors=errors, base_algo=base_algo, optimize_mode=optimize_mode,
                         experiment_data_dir=experiment_data_dir, verbose=verbose, plugins=plugins)

    def search(self, work: MaskedCopy) -> dict[str, int]:
        counts = {s.name: 0 for s in self.spaces}
        for round_index in range(1, self.num_iterations + 1):
            spaces = [attrs.evolve(s, floor=counts[s.name]) for s in self.spaces]
            target = target_weights(round_sparsity(self.sparsity, self.num_iterations, round_index), self.spaces)
            state = work.state()
            annealer = Annealer(spaces, target, count_evaluator(work, spaces, self.evaluator, state),
                                self.schedule, self.rng, self.maximize)
            counts, _ = annealer.run(
                lambda **entry: self.record(round=round_index, phase="annealing", **entry),
                self.verbose, f"AutoCompress round {round_index}: annealing",
            )
            work.restore(state)
            requests = {s.name: s.request(counts[s.name]) for s in spaces}
            admm_optimize(work.model, work.pruner, requests, self.trainer, verbose=self.verbose, **self.admm_options)
            work.set_counts(spaces, counts)
            self.best_score = float(self.evaluator(work.model))
            self.record(round=round_index, phase="admm", sparsities=layer_sparsities(spaces, counts),
                        overall_sparsity=overall_sparsity(spaces, counts), score=self.best_score)
        return counts

    def speedup_model(self) -> nn.Module:
        """A truly smaller copy of the pruned model (``nncore.speedup.ModelSpeedup`` on
        :attr:`dummy_input`), as NNI's AutoCompress returns; this pruner's model keeps its masks.

        :raises NncoreError: called before ``compress()``.
        """
        if not self.wrappers:
            raise NncoreError("AutoCompressPruner.speedup_model: call compress() first")
        from nncore.speedup import ModelSpeedup

        plain = copy.deepcopy(self.bound_model)
        for name in sorted(self.all_wrappers(), key=lambda n: -n.count(".")):
            set_submodule(plain, name, plain.get_submodule(name).module)
        return ModelSpeedup(plain, self.dummy_input, self.masks()).speedup_model()


@hookimpl
def register_compressors() -> list[type]:
    return [AutoCompressPruner]
