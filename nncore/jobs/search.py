"""Per-layer sparsities under a FLOPs or params budget: :func:`search_sparsities`, behind ``nncore auto``.

Every Optuna trial proposes one sparsity per prunable layer, prunes a copy of the trained model
with the chosen algorithm, and counts its cost as if the pruned channels were removed. A trial
that misses the budget is *pruned* (state PRUNED, its constraint recorded so TPE learns where the
feasible region is) and never evaluated, so every completed trial, the best one included, meets
the budget. A trial within budget is scored by the user's evaluator (higher is better). The first
trial of a fresh study is the uniform configuration that just meets the budget, so the search
starts from a feasible point and can only improve on uniform pruning.

The study lives in Optuna storage: a SQLite file by default (``sqlite:///nncore-auto.db``), any
database URL to spread the trials over many machines: start ``nncore auto`` with the same
``--storage`` and ``--study-name`` on each of them.

>>> result = search_sparsities(model, evaluate, torch.zeros(1, 1, 8, 8), budget=0.5, n_trials=30)
>>> result.config_list     # [{"sparsity": 0.3, "op_names": ["conv1"]}, ...] for ``nncore compress --config``
"""
from __future__ import annotations

import copy
import json
import os
import socket
import time
from typing import Any, Callable

import attrs
import torch
import torch.nn as nn

from nncore.errors import ConfigError, NncoreError
from nncore.jobs.annealing import SimulatedAnnealingSampler, optuna, require_optuna
from nncore.jobs.cost import compressed_cost
from nncore.jobs.options import SAMPLERS
from nncore.jobs.pruning import make_pruner

BUDGET_METRICS = ("flops", "params")
_HEADER = "invalid auto-compression argument"


def make_sampler(name: str, seed: int | None) -> Any:
    """The Optuna sampler ``'tpe'`` (default), ``'random'`` or ``'anneal'``."""
    require_optuna()
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "anneal":
        return SimulatedAnnealingSampler(seed=seed)
    raise ConfigError(f"sampler: {name!r} is not one of {', '.join(SAMPLERS)}", header=_HEADER)


def open_study(storage: str | None, study_name: str | None, sampler: Any, attempts: int = 6) -> Any:
    """Create or load the study (maximise). SQLite waits up to 2 minutes for locks; workers that
    start together and race to create the tables or the study retry."""
    require_optuna()

    def create() -> Any:
        backend: Any = storage
        if storage is not None and storage.startswith("sqlite"):
            backend = optuna.storages.RDBStorage(storage, engine_kwargs={"connect_args": {"timeout": 120}})
        return optuna.create_study(storage=backend, study_name=study_name, sampler=sampler,
                                   direction="maximize", load_if_exists=True)

    for attempt in range(attempts - 1):
        try:
            return create()
        except Exception:  # noqa: BLE001 - table/study creation races between workers: retry
            time.sleep(0.3 * (attempt + 1))
    try:
        return create()
    except Exception as exc:  # noqa: BLE001 - one line for the user, cause chained
        raise NncoreError(f"cannot open study {study_name!r} at {storage!r}: {type(exc).__name__}: {exc}") from exc


def config_list_from(sparsities: dict[str, float]) -> list[dict[str, Any]]:
    """One ``{"sparsity", "op_names"}`` entry per layer with a sparsity above zero."""
    return [{"sparsity": round(value, 4), "op_names": [name]} for name, value in sparsities.items() if value > 0]


@attrs.frozen
class AutoResult:
    """The best trial of the study: its config_list, evaluator value and cost ratios."""

    config_list: list
    value: float
    flops_ratio: float
    params_ratio: float
    trial_number: int
    completed: int
    pruned: int


class BudgetSearch:
    """What a trial needs: the model, its prunable layers, the budget and the cost of a config."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor, algo: str, budget: float, metric: str,
                 max_sparsity: float, step: float) -> None:
        from nncore.registry import get_compressor
        from nncore.utils import count_flops_params

        if metric not in BUDGET_METRICS:
            raise ConfigError(f"metric: {metric!r} is not one of {', '.join(BUDGET_METRICS)}", header=_HEADER)
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget < 1:
            raise ConfigError(f"budget must be a ratio in (0, 1), got {budget!r}", header=_HEADER)
        if not 0 < max_sparsity < 1 or not 0 < step <= max_sparsity:
            raise ConfigError(f"need 0 < step <= max_sparsity < 1, got step {step}, max_sparsity {max_sparsity}",
                              header=_HEADER)
        self.model, self.example_input, self.algo = model, example_input, algo
        self.budget, self.metric, self.max_sparsity, self.step = float(budget), metric, max_sparsity, step
        layers = get_compressor(algo).check_config(model, [{"sparsity": 0.0, "op_types": ["default"]}])
        self.layers = [config.name for config in layers]
        flops, params, _ = count_flops_params(model, (example_input,), verbose=False)
        self.base = {"flops": flops, "params": params}

    def grid(self) -> list[float]:
        """The sparsities a trial may pick: 0, step, 2*step, ... up to max_sparsity."""
        return [round(i * self.step, 6) for i in range(int(round(self.max_sparsity / self.step)) + 1)]

    def pruned_copy(self, sparsities: dict[str, float]) -> tuple[nn.Module, Any]:
        """A copy of the model pruned with ``sparsities`` and its pruner, still compressing (or
        ``None`` when nothing is pruned); the model itself is not touched."""
        work = copy.deepcopy(self.model)
        config_list = config_list_from(sparsities)
        if not config_list:
            return work, None
        pruner = make_pruner(self.algo, work, config_list, self.example_input)
        pruner.compress()
        return work, pruner

    def ratios(self, pruner: Any) -> dict[str, float]:
        """FLOPs and params after pruning with ``pruner``'s masks, relative to the unpruned model."""
        if pruner is None:
            return {"flops": 1.0, "params": 1.0}
        flops, params, _ = compressed_cost(self.model, pruner.masks(), self.example_input)
        return {"flops": flops / self.base["flops"], "params": params / self.base["params"]}

    def uniform_within_budget(self) -> dict[str, float]:
        """The smallest uniform sparsity on the grid that meets the budget (bisection: the cost
        does not grow with the sparsity)."""
        grid = self.grid()

        def meets(index: int) -> bool:
            uniform = {name: grid[index] for name in self.layers}
            _, pruner = self.pruned_copy(uniform)
            ratios = self.ratios(pruner)
            if pruner is not None:
                pruner.unwrap_model()
            return ratios[self.metric] <= self.budget

        low, high = 0, len(grid) - 1
        if not meets(high):
            raise ConfigError(f"a {self.metric} budget of {self.budget} cannot be met even with sparsity "
                              f"{self.max_sparsity} on every layer of {self.layers}", header=_HEADER)
        while low < high:
            middle = (low + high) // 2
            low, high = (low, middle) if meets(middle) else (middle + 1, high)
        return {name: grid[high] for name in self.layers}


def search_sparsities(
    model: nn.Module,
    evaluator: Callable[[nn.Module], float],
    example_input: torch.Tensor,
    *,
    budget: float = 0.5,
    metric: str = "flops",
    algo: str = "l1",
    n_trials: int = 20,
    storage: str | None = None,
    study_name: str | None = None,
    sampler: str = "tpe",
    seed: int | None = None,
    max_sparsity: float = 0.9,
    step: float = 0.05,
    finetune: Callable[[nn.Module], None] | None = None,
    verbose: bool = True,
) -> AutoResult:
    """Search one sparsity per layer that meets ``budget`` and maximises ``evaluator``.

    :param model: the trained model (never modified: each trial prunes a copy).
    :param evaluator: ``evaluator(pruned_model) -> float``, higher is better (e.g. validation accuracy).
    :param example_input: an input of the model, batch of one (FLOPs are counted on it).
    :param budget: the largest allowed ratio of ``metric`` to the unpruned model's, in (0, 1).
    :param metric: ``'flops'`` or ``'params'``.
    :param algo: the pruner's registry name (default L1 filter pruning; dependency-aware when possible).
    :param n_trials: trials run by this call (other workers on the same study add theirs).
    :param storage: Optuna storage URL (``sqlite:///file.db``, ``postgresql://...``); None keeps it in memory.
    :param study_name: the study to create or join.
    :param sampler: ``'tpe'``, ``'random'`` or ``'anneal'`` (:class:`SimulatedAnnealingSampler`).
    :param seed: sampler seed (give each worker its own, or None).
    :param max_sparsity: the largest sparsity a layer may get; ``step`` the grid of sparsities.
    :param finetune: ``finetune(pruned_model)`` run before the evaluator, masks kept (e.g. one epoch).
    :param verbose: progress bar.
    :raises ConfigError: bad arguments, an unreachable budget, or a study made for another budget.
    """
    require_optuna()
    verbosity = optuna.logging.get_verbosity()
    if not verbose:
        optuna.logging.set_verbosity(max(verbosity, optuna.logging.WARNING))
    try:
        return _search(model, evaluator, example_input, budget, metric, algo, n_trials, storage, study_name,
                       sampler, seed, max_sparsity, step, finetune, verbose)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _search(model, evaluator, example_input, budget, metric, algo, n_trials, storage, study_name, sampler, seed,
            max_sparsity, step, finetune, verbose) -> AutoResult:
    from tqdm.auto import tqdm

    search = BudgetSearch(model, example_input, algo, budget, metric, max_sparsity, step)
    study = open_study(storage, study_name, make_sampler(sampler, seed))
    _check_study_setup(study, {"budget": search.budget, "metric": metric, "algo": algo, "layers": search.layers})
    if not study.trials:
        study.enqueue_trial(search.uniform_within_budget())

    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: Any) -> float:
        trial.set_user_attr("worker", worker)
        sparsities = {name: trial.suggest_float(name, 0.0, max_sparsity, step=step) for name in search.layers}
        pruned, pruner = search.pruned_copy(sparsities)
        try:
            ratios = search.ratios(pruner)
            trial.set_user_attr("flops_ratio", ratios["flops"])
            trial.set_user_attr("params_ratio", ratios["params"])
            trial.set_constraint("budget", ratios[metric] - search.budget)
            if ratios[metric] > search.budget:
                raise optuna.TrialPruned(f"{metric} ratio {ratios[metric]:.3f} over budget {search.budget}")
            if finetune is not None:
                finetune(pruned)
        finally:
            if pruner is not None:
                pruner.unwrap_model()
        return float(evaluator(pruned))

    bar = tqdm(total=n_trials, desc="auto trials", disable=not verbose, leave=False)

    def progress(study_: Any, trial: Any) -> None:
        bar.update(1)
        best = _best_feasible(study_)
        if best is not None:
            bar.set_postfix(best=f"{best.value:.4g}")

    try:
        study.optimize(objective, n_trials=n_trials, callbacks=[progress], catch=())
    finally:
        bar.close()
    return best_result(study)


def _check_study_setup(study: Any, setup: dict[str, Any]) -> None:
    stored = study.user_attrs.get("nncore_setup")
    if stored is None:
        study.set_user_attr("nncore_setup", setup)
    elif stored != json.loads(json.dumps(setup)):
        raise ConfigError(f"study {study.study_name!r} was created for {stored}, not {setup}; "
                          "use another --study-name", header=_HEADER)


def _best_feasible(study: Any) -> Any:
    completed = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                 if t.value is not None]
    return max(completed, key=lambda t: (t.value, -t.number), default=None)


def best_result(study: Any) -> AutoResult:
    """The best completed (hence within-budget) trial of ``study``."""
    best = _best_feasible(study)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    if best is None:
        raise NncoreError(f"study {study.study_name!r} has no completed trial within budget yet; run more trials")
    return AutoResult(
        config_list=config_list_from(best.params), value=best.value,
        flops_ratio=best.user_attrs["flops_ratio"], params_ratio=best.user_attrs["params_ratio"],
        trial_number=best.number, completed=states.count(optuna.trial.TrialState.COMPLETE),
        pruned=states.count(optuna.trial.TrialState.PRUNED),
    )
