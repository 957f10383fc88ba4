"""NetAdaptPruner: greedy layer-by-layer pruning to a budget (Yang et al., 2018).

Each iteration asks every layer in turn to give up ``sparsity_per_iteration`` of all the selected
weights (the last iteration only what is left of the budget), fine-tunes each candidate
briefly, scores it, and keeps the best one (its fine-tuned weights too). It stops once the
overall sparsity is reached. When no layer can give up a whole step, the step is halved.
"""
from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import torch.nn as nn

from nncore.builtin_pruners.search_base import (
    MaskedCopy,
    SearchPruner,
    callable_error,
    layer_sparsities,
    number_error,
    overall_sparsity,
    progress,
    pruned_weights,
    target_weights,
    total_weights,
)
from nncore.errors import NncoreError
from nncore.hookspecs import hookimpl


class NetAdaptPruner(SearchPruner):
    """Prunes one layer at a time, picking the layer whose short-term fine-tuned score is best.

    ``config_list`` key ``sparsity``: the overall fraction of the weights of the selected layers
    to prune. Candidates are built on a copy of the model; the model receives the weights and
    masks of the final choice. The history (one entry per candidate) is written to
    ``experiment_data_dir/search_history.json``, the result to ``search_result.json``.

    :param model: the model to prune.
    :param config_list: see above.
    :param short_term_fine_tuner: ``fine_tuner(model)``: trains the masked model briefly.
    :param evaluator: ``evaluator(model) -> float``, e.g. the validation accuracy.
    :param optimize_mode: ``'maximize'`` or ``'minimize'`` the evaluator's score.
    :param base_algo: registry name of the pruner that turns sparsities into masks.
    :param sparsity_per_iteration: fraction of all selected weights pruned per iteration.
    :param experiment_data_dir: where the JSON files go.
    :param verbose: show a progress bar.
    :raises ConfigError: a bad argument or ``config_list``; the model is untouched.
    """

    name: ClassVar[str] = "netadapt"
    job_arguments: ClassVar[Mapping[str, str]] = {"short_term_fine_tuner": "finetuner", "evaluator": "evaluator",
                                                  "experiment_data_dir": "output_dir", "verbose": "verbose"}

    def __init__(
        self,
        model: nn.Module,
        config_list: Sequence[dict[str, Any]],
        short_term_fine_tuner: Callable[[nn.Module], Any],
        evaluator: Callable[[nn.Module], float],
        optimize_mode: str = "maximize",
        base_algo: str = "l1",
        sparsity_per_iteration: float = 0.05,
        experiment_data_dir: str = "./",
        *,
        verbose: bool = True,
        plugins: Iterable[Any] = (),
    ):
        errors = callable_error(short_term_fine_tuner, "short_term_fine_tuner")
        errors += callable_error(evaluator, "evaluator")
        errors += number_error(sparsity_per_iteration, "sparsity_per_iteration", low=0, high=1, low_open=True)
        self.short_term_fine_tuner = short_term_fine_tuner
        self.evaluator = evaluator
        self.sparsity_per_iteration = sparsity_per_iteration
        super().__init__(model, config_list, errors=errors, base_algo=base_algo, optimize_mode=optimize_mode,
                         experiment_data_dir=experiment_data_dir, verbose=verbose, plugins=plugins)

    def search(self, work: MaskedCopy) -> dict[str, int]:
        spaces = self.spaces
        target = target_weights(self.sparsity, spaces)
        counts = {s.name: 0 for s in spaces}
        step = max(1, int(self.sparsity_per_iteration * total_weights(spaces)))
        bar = progress(target, "NetAdapt (weights pruned)", self.verbose)
        iteration = 0
        while pruned_weights(spaces, counts) < target:
            wanted = min(step, target - pruned_weights(spaces, counts))
            state = work.state()
            best: dict[str, Any] | None = None
            for space in spaces:
                extra = math.ceil(wanted / space.unit_size)
                if counts[space.name] + extra > space.ceiling:
                    continue
                candidate = {**counts, space.name: counts[space.name] + extra}
                work.restore(state)
                work.set_counts(spaces, candidate)
                self.short_term_fine_tuner(work.model)
                score = float(self.evaluator(work.model))
                self.record(
                    iteration=iteration, layer=space.name, sparsities=layer_sparsities(spaces, candidate),
                    overall_sparsity=overall_sparsity(spaces, candidate), score=score,
                )
                if best is None or self.better(score, best["score"]):
                    best = {"layer": space.name, "counts": candidate, "score": score, "state": work.state()}
            if best is None:
                if all(counts[s.name] >= s.ceiling for s in spaces):
                    raise NncoreError(f"NetAdaptPruner: cannot reach sparsity {self.sparsity}: no layer can lose more")
                step = max(1, step // 2)
                continue
            work.restore(best["state"])
            bar.update(pruned_weights(spaces, best["counts"]) - pruned_weights(spaces, counts))
            counts, self.best_score = best["counts"], best["score"]
            for entry in self.history:
                if entry["iteration"] == iteration:
                    entry["selected"] = entry["layer"] == best["layer"]
            bar.set_postfix(layer=best["layer"], score=f"{best['score']:.4g}")
            iteration += 1
        bar.close()
        return counts


@hookimpl
def register_compressors() -> list[type]:
    return [NetAdaptPruner]
