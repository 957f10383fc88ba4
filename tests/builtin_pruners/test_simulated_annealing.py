"""SimulatedAnnealingPruner: overall budget, history JSON, the acceptance rule, bad input."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch

from nncore import ConfigError, get_compressor
from nncore.builtin_pruners.simulated_annealing import AnnealingSchedule, SimulatedAnnealingPruner, accept_move
from tests.builtin_pruners.search_helpers import (
    assert_filter_structured,
    assert_masks_in_effect,
    negative_loss,
    pruned_and_total,
)
from tests.conftest import assert_untouched, make_tiny_cnn, snapshot


def anneal(tmp_path, base_algo="level", sparsity=0.5, seed=0, evaluator=negative_loss, **options):
    model = make_tiny_cnn()
    pruner = SimulatedAnnealingPruner(model, [{"sparsity": sparsity, "op_types": ["default"]}], evaluator,
                                      base_algo=base_algo, experiment_data_dir=str(tmp_path), seed=seed,
                                      verbose=False, **options)
    pruner.compress()
    return model, pruner


def test_registered_under_simulated_annealing():
    assert get_compressor("simulated_annealing") is SimulatedAnnealingPruner


def test_level_meets_the_overall_sparsity_exactly(tmp_path):
    model, pruner = anneal(tmp_path, sparsity=0.6)
    pruned, total = pruned_and_total(pruner)
    assert pruned == math.ceil(0.6 * total)
    assert_masks_in_effect(pruner)
    sparsities = pruner.final_sparsities()
    assert len(set(sparsities.values())) > 1  # a per-layer distribution, not a uniform one
    sizes = {name: pruner.wrappers[name].weight_mask.numel() for name in sparsities}
    by_size = sorted(sparsities, key=sizes.get)
    # as in NNI, a bigger layer never gets a lower sparsity than a smaller one (up to one weight)
    assert all(sparsities[a] <= sparsities[b] + 1 / sizes[b] for a, b in zip(by_size, by_size[1:]))


def test_l1_prunes_whole_filters_and_meets_the_budget(tmp_path):
    model, pruner = anneal(tmp_path, base_algo="l1", sparsity=0.5)
    pruned, total = pruned_and_total(pruner)
    largest_filter = max(m[0].numel() for m in (w.weight_mask for w in pruner.wrappers.values()))
    assert math.ceil(0.5 * total) <= pruned < math.ceil(0.5 * total) + largest_filter
    for wrapper in pruner.wrappers.values():
        assert_filter_structured(wrapper.weight_mask)
    assert torch.equal(pruner.followers["bn1"].weight_mask, pruner.wrappers["conv1"].weight_mask.flatten(1)[:, 0])


def test_export_model_writes_the_pruned_weights_under_the_original_keys(tmp_path):
    model, pruner = anneal(tmp_path, base_algo="l1", sparsity=0.5)
    pruner.export_model(str(tmp_path / "model.pt"), str(tmp_path / "mask.pt"))
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    masks = torch.load(tmp_path / "mask.pt", weights_only=True)
    assert state.keys() == make_tiny_cnn().state_dict().keys()
    assert set(masks) == {"conv1", "bn1", "conv2"}
    assert torch.equal(state["conv2.weight"] * masks["conv2"]["weight"], state["conv2.weight"])
    zero_filters = int((state["conv2.weight"].flatten(1).abs().sum(1) == 0).sum())
    assert zero_filters == int((masks["conv2"]["weight"].flatten(1)[:, 0] == 0).sum()) > 0


def test_progress_is_shown_unless_verbose_is_off(tmp_path, capsys):
    short = {"stop_temperature": 50, "cool_down_rate": 0.7}
    anneal(tmp_path / "quiet", **short)
    assert capsys.readouterr().err == ""
    model = make_tiny_cnn()
    SimulatedAnnealingPruner(model, [{"sparsity": 0.5, "op_types": ["default"]}], negative_loss, base_algo="level",
                             experiment_data_dir=str(tmp_path / "loud"), seed=0, **short).compress()
    assert "simulated annealing" in capsys.readouterr().err


def test_history_json_has_every_step_and_the_best_is_applied(tmp_path):
    model, pruner = anneal(tmp_path)
    saved = json.loads((tmp_path / "search_history.json").read_text())
    steps = saved["history"]
    assert len(steps) == 1 + len(AnnealingSchedule().temperatures())
    for step in steps:
        assert set(step["sparsities"]) == {"conv1", "conv2", "fc"}
        assert step["overall_sparsity"] >= 0.5
        assert isinstance(step["score"], float)
    assert saved["score"] == max(step["score"] for step in steps) == pruner.best_score
    assert negative_loss(model) == pytest.approx(saved["score"], abs=1e-6)  # SA does not train
    assert saved["sparsities"] == pytest.approx(pruner.final_sparsities())
    pruned, total = pruned_and_total(pruner)
    assert saved["overall_sparsity"] == pytest.approx(pruned / total)
    result = json.loads((tmp_path / "search_result.json").read_text())
    assert {entry["op_names"][0] for entry in result["config_list"]} <= {"conv1", "conv2", "fc"}


def test_minimize_keeps_the_lowest_score(tmp_path):
    _, pruner = anneal(tmp_path, evaluator=lambda model: -negative_loss(model), optimize_mode="minimize")
    scores = [step["score"] for step in pruner.history]
    assert pruner.best_score == min(scores)


def test_the_same_seed_gives_the_same_search(tmp_path):
    short = {"stop_temperature": 50, "cool_down_rate": 0.7}
    _, first = anneal(tmp_path / "a", seed=7, **short)
    _, second = anneal(tmp_path / "b", seed=7, **short)
    _, third = anneal(tmp_path / "c", seed=8, **short)
    assert first.history == second.history
    assert first.history != third.history


def test_acceptance_rule_is_deterministic_with_a_seeded_rng():
    rng = random.Random(0)
    assert accept_move(0.9, 0.5, temperature=1.0, rng=rng)  # better: accepted without a draw
    draws = random.Random(0)
    rng = random.Random(0)
    assert accept_move(0.4, 0.5, 1.0, rng) is (draws.random() < math.exp(-0.1))
    assert accept_move(0.0, 1.0, 1.0, rng) is (draws.random() < math.exp(-1.0))
    assert accept_move(0.0, 1.0, 0.1, rng) is (draws.random() < math.exp(-10.0))
    # in minimize mode a lower score is the better one
    assert accept_move(0.4, 0.5, 1.0, random.Random(0), maximize=False)


def test_better_moves_do_not_consume_the_rng():
    rng = random.Random(0)
    state = rng.getstate()
    assert accept_move(2.0, 1.0, 5.0, rng)
    assert rng.getstate() == state


@pytest.mark.parametrize(
    ("arguments", "config", "message"),
    [
        ({"evaluator": None}, None, "evaluator: must be a callable, got None"),
        ({"evaluator": 3}, None, "evaluator: must be a callable, got int"),
        ({"optimize_mode": "max"}, None, "optimize_mode: must be one of 'maximize', 'minimize', got 'max'"),
        ({"base_algo": "nope"}, None, "base_algo: unknown compressor 'nope'"),
        ({"stop_temperature": 200}, None, "start_temperature: must be greater than stop_temperature 200"),
        ({"cool_down_rate": 1.0}, None, "cool_down_rate: must be a number > 0 and < 1, got 1.0"),
        ({}, [{"sparsity": 1.0, "op_types": ["default"]}], "config_list[0].sparsity: 1.0 is greater than or equal"),
        ({}, [{"sparsity": 0.5, "op_types": ["Conv2d"]}, {"sparsity": 0.3, "op_names": ["fc"]}],
         "config_list[1].sparsity: 0.3 differs from config_list[0].sparsity 0.5"),
        ({"base_algo": "l1"}, [{"sparsity": 0.5, "op_names": ["bn1"]}], "cannot compress 'bn1' (BatchNorm2d)"),
    ],
)
def test_bad_input_raises_config_error_and_leaves_the_model_untouched(arguments, config, message):
    model = make_tiny_cnn()
    before = snapshot(model)
    options = {"evaluator": negative_loss, "base_algo": "level", **arguments}
    with pytest.raises(ConfigError) as info:
        SimulatedAnnealingPruner(model, config or [{"sparsity": 0.5, "op_types": ["default"]}], verbose=False, **options)
    assert any(message in error for error in info.value.errors), info.value.errors
    assert_untouched(model, before)
