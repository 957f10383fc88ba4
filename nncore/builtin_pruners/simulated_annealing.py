"""SimulatedAnnealingPruner: search per-layer sparsities by simulated annealing (Liu et al., 2020).

Start from a random distribution of per-layer sparsities that meets the overall sparsity; at
each temperature perturb it (by at most ``perturbation_magnitude * T / T0`` per layer, rescaled
to meet the overall sparsity again), evaluate the masked model and accept the move if it scores
better, or else with probability ``exp(-|delta| / T)``; then cool down by ``cool_down_rate``
until the temperature falls to ``stop_temperature``. As in NNI, a layer with more weights never
gets a lower sparsity than a layer with fewer.
"""
from __future__ import annotations

import math
import random
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import attrs
import torch.nn as nn

from nncore.builtin_pruners.search_base import (
    LayerSpace,
    MaskedCopy,
    SearchPruner,
    callable_error,
    count_evaluator,
    fit_counts,
    layer_sparsities,
    number_error,
    overall_sparsity,
    progress,
    pruned_weights,
    target_weights,
)
from nncore.hookspecs import hookimpl

MAX_DRAWS = 100


def accept_move(score: float, current: float, temperature: float, rng: random.Random, maximize: bool = True) -> bool:
    """The annealing rule: a better ``score`` is accepted; a worse one with ``exp(-|delta| / T)``.

    ``rng`` is drawn from only for a worse score, so a seeded ``rng`` makes the rule deterministic.
    """
    if (score > current) if maximize else (score < current):
        return True
    return rng.random() < math.exp(-abs(score - current) / temperature)


@attrs.frozen
class AnnealingSchedule:
    """Temperatures and perturbation size of one annealing run."""

    start_temperature: float = 100.0
    stop_temperature: float = 20.0
    cool_down_rate: float = 0.9
    perturbation_magnitude: float = 0.35

    def temperatures(self) -> list[float]:
        """The temperature of every step: ``T0, T0 * r, ...`` while above the stop temperature."""
        steps, temperature = [], self.start_temperature
        while temperature > self.stop_temperature:
            steps.append(temperature)
            temperature *= self.cool_down_rate
        return steps


def schedule_errors(start: Any, stop: Any, rate: Any, magnitude: Any) -> list[str]:
    """Messages for annealing arguments out of range."""
    errors = number_error(stop, "stop_temperature", low=0, low_open=True)
    errors += number_error(start, "start_temperature", low=0, low_open=True)
    if not errors and start <= stop:
        errors.append(f"start_temperature: must be greater than stop_temperature {stop}, got {start}")
    errors += number_error(rate, "cool_down_rate", low=0, high=1, low_open=True, high_open=True)
    errors += number_error(magnitude, "perturbation_magnitude", low=0, low_open=True)
    return errors


class Annealer:
    """Simulated annealing over fractions ``y`` of each layer's *prunable* units (above its floor).

    :param spaces: the layers (their floors are units already pruned).
    :param target: weights to have pruned in total, floors included.
    :param score: evaluates unit counts per layer.
    """

    def __init__(self, spaces: Sequence[LayerSpace], target: int, score: Callable[[Mapping[str, int]], float],
                 schedule: AnnealingSchedule, rng: random.Random, maximize: bool):
        self.spaces, self.target, self.score = list(spaces), target, score
        self.schedule, self.rng, self.maximize = schedule, rng, maximize
        self.free_units = [s.units - s.floor for s in self.spaces]
        self.need = target - pruned_weights(self.spaces, {s.name: s.floor for s in self.spaces})

    def _assign_by_size(self, values: Sequence[float]) -> list[float]:
        order = sorted(range(len(self.spaces)), key=lambda i: self.free_units[i] * self.spaces[i].unit_size)
        assigned = [0.0] * len(values)
        for value, index in zip(sorted(values), order):
            assigned[index] = value
        return assigned

    def _rescale(self, values: Sequence[float]) -> list[float] | None:
        values = self._assign_by_size([max(v, 0.0) for v in values])
        planned = sum(v * f * s.unit_size for v, f, s in zip(values, self.free_units, self.spaces))
        if planned <= 0:
            return None
        scaled = [v * self.need / planned for v in values]
        fits = all(v <= 1 - 1 / f if f > 0 else v == 0 for v, f in zip(scaled, self.free_units))
        return scaled if fits else None

    def _counts(self, values: Sequence[float]) -> dict[str, int]:
        desired = {s.name: (s.floor + v * f) / s.units for s, v, f in zip(self.spaces, values, self.free_units)}
        return fit_counts(self.spaces, desired, self.target)

    def initial(self) -> list[float]:
        """A random distribution meeting the target (uniform if none is drawn in 100 tries)."""
        for _ in range(MAX_DRAWS):
            values = self._rescale([self.rng.uniform(0, 1) for _ in self.spaces])
            if values is not None:
                return values
        return self._rescale([1.0] * len(self.spaces)) or [0.0] * len(self.spaces)

    def perturb(self, values: Sequence[float], temperature: float) -> list[float]:
        """A random neighbour of ``values`` meeting the target (``values`` if none in 100 tries)."""
        magnitude = temperature / self.schedule.start_temperature * self.schedule.perturbation_magnitude
        for _ in range(MAX_DRAWS):
            moved = self._rescale([v + self.rng.uniform(-magnitude, magnitude) for v in values])
            if moved is not None:
                return moved
        return list(values)

    def run(self, record: Callable[..., None], verbose: bool, description: str) -> tuple[dict[str, int], float]:
        """Anneal; ``record`` gets every evaluated step. Returns the best counts and their score."""
        temperatures = self.schedule.temperatures()
        bar = progress(len(temperatures) + 1, description, verbose)
        current = self.initial()
        current_counts = self._counts(current)
        current_score = self.score(current_counts)
        best_counts, best_score = current_counts, current_score
        self._record(record, None, current_counts, current_score, True, True)
        bar.update()
        for temperature in temperatures:
            candidate = self.perturb(current, temperature)
            counts = self._counts(candidate)
            score = self.score(counts)
            accepted = accept_move(score, current_score, temperature, self.rng, self.maximize)
            if accepted:
                current, current_score = candidate, score
            improved = (score > best_score) if self.maximize else (score < best_score)
            if improved:
                best_counts, best_score = counts, score
            self._record(record, temperature, counts, score, accepted, improved)
            bar.set_postfix(score=f"{score:.4g}", best=f"{best_score:.4g}")
            bar.update()
        bar.close()
        return best_counts, best_score

    def _record(self, record: Callable[..., None], temperature: float | None, counts: Mapping[str, int],
                score: float, accepted: bool, best: bool) -> None:
        record(
            temperature=temperature,
            sparsities=layer_sparsities(self.spaces, counts),
            overall_sparsity=overall_sparsity(self.spaces, counts),
            score=score,
            accepted=accepted,
            best=best,
        )


class SimulatedAnnealingPruner(SearchPruner):
    """Searches per-layer sparsities by simulated annealing; the masks come from ``base_algo``.

    ``config_list`` key ``sparsity``: the overall fraction of the weights of the selected layers
    to prune. Each candidate is scored by ``evaluator`` on a masked copy of the model (no
    training); the best one is applied to the model. The history is written to
    ``experiment_data_dir/search_history.json``, the result to ``search_result.json``.

    :param model: the model to prune.
    :param config_list: see above.
    :param evaluator: ``evaluator(model) -> float``, e.g. the validation accuracy.
    :param optimize_mode: ``'maximize'`` or ``'minimize'`` the evaluator's score.
    :param base_algo: registry name of the pruner that turns sparsities into masks
        (``'l1'``: whole filters, ``'level'``: single weights).
    :param start_temperature: first temperature.
    :param stop_temperature: the search stops when the temperature falls to it.
    :param cool_down_rate: temperature factor per step, in (0, 1).
    :param perturbation_magnitude: largest change of a layer's sparsity at the start temperature;
        it shrinks with the temperature.
    :param experiment_data_dir: where the JSON files go.
    :param seed: seed of the random generator (``None``: not seeded).
    :param verbose: show a progress bar.
    :raises ConfigError: a bad argument or ``config_list``; the model is untouched.
    """

    name: ClassVar[str] = "simulated_annealing"
    job_arguments: ClassVar[Mapping[str, str]] = {"evaluator": "evaluator", "experiment_data_dir": "output_dir",
                                                  "seed": "seed", "verbose": "verbose"}

    def __init__(
        self,
        model: nn.Module,
        config_list: Sequence[dict[str, Any]],
        evaluator: Callable[[nn.Module], float],
        optimize_mode: str = "maximize",
        base_algo: str = "l1",
        start_temperature: float = 100,
        stop_temperature: float = 20,
        cool_down_rate: float = 0.9,
        perturbation_magnitude: float = 0.35,
        experiment_data_dir: str = "./",
        *,
        seed: int | None = None,
        verbose: bool = True,
        plugins: Iterable[Any] = (),
    ):
        errors = callable_error(evaluator, "evaluator")
        errors += schedule_errors(start_temperature, stop_temperature, cool_down_rate, perturbation_magnitude)
        self.evaluator = evaluator
        if not errors:
            self.schedule = AnnealingSchedule(start_temperature, stop_temperature, cool_down_rate, perturbation_magnitude)
        self.rng = random.Random(seed)
        super().__init__(model, config_list, errors=errors, base_algo=base_algo, optimize_mode=optimize_mode,
                         experiment_data_dir=experiment_data_dir, verbose=verbose, plugins=plugins)

    def search(self, work: MaskedCopy) -> dict[str, int]:
        base_state = work.state()
        target = target_weights(self.sparsity, self.spaces)
        annealer = Annealer(self.spaces, target, count_evaluator(work, self.spaces, self.evaluator, base_state),
                            self.schedule, self.rng, self.maximize)
        counts, self.best_score = annealer.run(self.record, self.verbose, "simulated annealing")
        work.restore(base_state)
        work.set_counts(self.spaces, counts)
        return counts


@hookimpl
def register_compressors() -> list[type]:
    return [SimulatedAnnealingPruner]
