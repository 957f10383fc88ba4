"""A simulated-annealing sampler for Optuna, and the Optuna import that ``nncore auto`` needs."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from nncore.errors import NncoreError

try:
    import optuna
    from optuna.samplers import BaseSampler
except ImportError:  # the module still imports; require_optuna raises a clear error
    optuna = None
    BaseSampler = object


def require_optuna() -> Any:
    """The optuna module, or an error telling how to install it."""
    if optuna is None:
        raise NncoreError("nncore auto needs Optuna, which is not installed: pip install optuna")
    return optuna


class SimulatedAnnealingSampler(BaseSampler):
    """Simulated annealing through Optuna's sampler interface (works across workers sharing a study).

    The chain walks the study's completed trials in order: a trial becomes the current point when
    it is better, or with probability ``exp(-worse_by / T)``; ``T`` starts at ``temperature`` (in the
    objective's units) and is multiplied by ``cooldown`` after every step. A new trial is a neighbour
    of the current point: each float/int parameter moves by a normal step of ``neighbourhood`` times
    its range (snapped to its ``step``), each categorical one is redrawn with that probability.
    Before the first completed trial, and for parameters outside the common search space,
    parameters are drawn at random.
    """

    def __init__(self, temperature: float = 0.05, cooldown: float = 0.9, neighbourhood: float = 0.15,
                 seed: int | None = None) -> None:
        require_optuna()
        self._rng = np.random.RandomState(seed)
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._space = optuna.search_space.IntersectionSearchSpace()
        self.temperature, self.cooldown, self.neighbourhood = temperature, cooldown, neighbourhood
        self._current: Any = None
        self._seen: set[int] = set()

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return self._space.calculate(study)

    def _walk(self, study: Any) -> None:
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        for trial in sorted(completed, key=lambda t: t.number):
            if trial.number in self._seen:
                continue
            self._seen.add(trial.number)
            if self._current is None:
                self._current = trial
                continue
            worse_by = (self._current.value - trial.value) if maximize else (trial.value - self._current.value)
            if worse_by <= 0 or self._rng.uniform() < math.exp(-worse_by / max(self.temperature, 1e-12)):
                self._current = trial
            self.temperature *= self.cooldown

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        if not search_space:
            return {}
        self._walk(study)
        if self._current is None:
            return {}
        return {name: self._neighbour(distribution, self._current.params[name])
                for name, distribution in search_space.items() if name in self._current.params}

    def _neighbour(self, distribution: Any, value: Any) -> Any:
        dists = optuna.distributions
        if isinstance(distribution, dists.CategoricalDistribution):
            if self._rng.uniform() < self.neighbourhood:
                return distribution.choices[self._rng.randint(len(distribution.choices))]
            return value
        low, high = distribution.low, distribution.high
        moved = value + self._rng.normal(0.0, self.neighbourhood * (high - low))
        step = getattr(distribution, "step", None)
        if isinstance(distribution, dists.IntDistribution):
            step = step or 1
        if step:
            moved = low + round((moved - low) / step) * step
        moved = min(max(moved, low), high)
        return int(moved) if isinstance(distribution, dists.IntDistribution) else float(moved)

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)
