"""Budgeted per-layer sparsity search: the Python API, the annealing sampler, two CLI workers on SQLite."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

optuna = pytest.importorskip("optuna")

from nncore.jobs.annealing import SimulatedAnnealingSampler  # noqa: E402
from nncore.jobs.search import best_result, open_study, search_sparsities  # noqa: E402
from nncore.cli import main  # noqa: E402
from nncore.errors import ConfigError  # noqa: E402
from nncore.jobs.cost import compressed_cost  # noqa: E402
from nncore.jobs.pruning import make_pruner  # noqa: E402
from nncore.utils import count_flops_params  # noqa: E402
from tests.conftest import assert_untouched, snapshot  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = torch.zeros(1, 1, 8, 8)
COMPLETE, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED


def tiny_digits_cnn() -> nn.Module:
    """A 1x8x8 -> 10 classes CNN small enough for tests (also used as ``--model`` by the workers)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def kept_weight_fraction(model: nn.Module) -> float:
    """A deterministic evaluator: the fraction of conv weights left non-zero."""
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    return float(sum((w != 0).sum() for w in weights) / sum(w.numel() for w in weights))


def flops_ratio_of(config_list: list, model: nn.Module) -> float:
    """FLOPs of ``model`` pruned by ``config_list`` (after speedup) over its unpruned FLOPs."""
    work = tiny_digits_cnn() if model is None else model
    pruner = make_pruner("l1", work, config_list, EXAMPLE)
    pruner.compress()
    masks = pruner.masks()
    pruner.unwrap_model()
    flops, _, _ = compressed_cost(work, masks, EXAMPLE)
    return flops / count_flops_params(tiny_digits_cnn(), EXAMPLE.shape, verbose=False)[0]


def test_search_meets_budget_and_leaves_model_untouched() -> None:
    model = tiny_digits_cnn()
    before = snapshot(model)
    result = search_sparsities(model, kept_weight_fraction, EXAMPLE, budget=0.6, n_trials=8, sampler="random",
                               seed=0, max_sparsity=0.75, step=0.25, verbose=False)
    assert_untouched(model, before)
    assert result.flops_ratio <= 0.6
    assert flops_ratio_of(result.config_list, tiny_digits_cnn()) == pytest.approx(result.flops_ratio)
    assert result.completed + result.pruned == 8 and result.completed >= 1


def test_trials_over_budget_are_pruned_and_first_trial_is_uniform(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result = search_sparsities(tiny_digits_cnn(), kept_weight_fraction, EXAMPLE, budget=0.6, n_trials=6,
                               storage=storage, study_name="s", sampler="tpe", seed=1, max_sparsity=0.75,
                               step=0.25, verbose=False)
    trials = optuna.load_study(study_name="s", storage=storage).trials
    # uniform 0.25 keeps 3 and 6 channels: (3*576 + 6*3*576 + 60) / (4*576 + 8*4*576 + 80) = 0.584 <= 0.6
    assert trials[0].params == {"0": 0.25, "3": 0.25} and trials[0].state == COMPLETE
    assert trials[0].user_attrs["flops_ratio"] == pytest.approx(12156 / 20816)
    for trial in trials:
        over = trial.user_attrs["flops_ratio"] > 0.6
        assert trial.state == (PRUNED if over else COMPLETE)
    completed = [t for t in trials if t.state == COMPLETE]
    assert result.value == max(t.value for t in completed)
    assert result.value == pytest.approx(kept_weight_fraction_for(result.config_list))


def kept_weight_fraction_for(config_list: list) -> float:
    model = tiny_digits_cnn()
    pruner = make_pruner("l1", model, config_list, EXAMPLE)
    pruner.compress()
    pruner.unwrap_model()
    return kept_weight_fraction(model)


def test_unreachable_budget_and_study_for_another_budget(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot be met even with sparsity 0.25"):
        search_sparsities(tiny_digits_cnn(), kept_weight_fraction, EXAMPLE, budget=0.1, n_trials=1,
                          max_sparsity=0.25, step=0.25, verbose=False)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    options = dict(n_trials=1, storage=storage, study_name="s", max_sparsity=0.75, step=0.25, verbose=False)
    search_sparsities(tiny_digits_cnn(), kept_weight_fraction, EXAMPLE, budget=0.6, **options)
    with pytest.raises(ConfigError, match="study 's' was created for"):
        search_sparsities(tiny_digits_cnn(), kept_weight_fraction, EXAMPLE, budget=0.5, **options)


def test_simulated_annealing_sampler_walks_the_grid_to_the_optimum() -> None:
    study = optuna.create_study(direction="maximize", sampler=SimulatedAnnealingSampler(seed=0))
    study.optimize(lambda t: -(t.suggest_float("x", 0, 1, step=0.05) - 0.3) ** 2
                   - (t.suggest_float("y", 0, 1, step=0.05) - 0.65) ** 2, n_trials=40)
    for trial in study.trials:
        for value in trial.params.values():
            assert 0 <= value <= 1 and abs(value / 0.05 - round(value / 0.05)) < 1e-6
    assert study.best_value > -0.01
    # after the first trial every proposal is a neighbour, not a uniform draw over [0, 1]
    steps = [abs(t.params["x"] - s.params["x"]) for s, t in zip(study.trials, study.trials[1:])]
    assert sum(steps) / len(steps) < 0.25


def test_both_budgets_at_once_is_an_argument_error(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["auto", "--flops-budget", "0.5", "--params-budget", "0.5"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_two_workers_share_one_sqlite_study(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'auto.db'}"
    env = {**os.environ, "NNCORE_CACHE": str(tmp_path / "cache"), "PYTHONWARNINGS": "ignore"}
    common = ["auto", "--model", "tests.jobs.test_search:tiny_digits_cnn", "--storage", storage, "--study-name", "shared",
              "--trials", "2", "--flops-budget", "0.9", "--max-sparsity", "0.5", "--epochs", "1",
              "--finetune-epochs", "0", "--batch-size", "256", "--quiet"]
    workers = [
        subprocess.Popen([sys.executable, "-m", "nncore.cli", *common, "--seed", str(seed),
                          "--output", str(tmp_path / f"best{seed}.json")],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed in (1, 2)
    ]
    outputs = [worker.communicate(timeout=240) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    assert outputs == [("", ""), ("", "")]
    study = open_study(storage, "shared", None)
    trials = study.trials
    assert len(trials) == 4
    completed = [t for t in trials if t.state == COMPLETE]
    assert len({t.user_attrs["worker"] for t in completed}) == 2
    assert all(t.user_attrs["flops_ratio"] <= 0.9 for t in completed)
    best = best_result(study)
    assert best.flops_ratio <= 0.9 and best.value == max(t.value for t in completed)
    for seed in (1, 2):
        config_list = json.loads((tmp_path / f"best{seed}.json").read_text())
        assert flops_ratio_of(config_list, tiny_digits_cnn()) <= 0.9
