"""NetAdaptPruner: greedy iterations to the budget, the history JSON, fine-tuned weights, bad input."""
from __future__ import annotations

import json
import math

import pytest
import torch

from nncore import ConfigError, get_compressor
from nncore.builtin_pruners.netadapt import NetAdaptPruner
from tests.builtin_pruners.search_helpers import (
    assert_filter_structured,
    assert_masks_in_effect,
    fine_tune,
    negative_loss,
    pruned_and_total,
)
from tests.conftest import assert_untouched, make_tiny_cnn, snapshot


def adapt(tmp_path, base_algo="level", sparsity=0.3, fine_tuner=fine_tune, op_types=("default",), **options):
    model = make_tiny_cnn()
    pruner = NetAdaptPruner(model, [{"sparsity": sparsity, "op_types": list(op_types)}], fine_tuner, negative_loss,
                            base_algo=base_algo, experiment_data_dir=str(tmp_path), verbose=False, **options)
    pruner.compress()
    return model, pruner


def test_registered_under_netadapt():
    assert get_compressor("netadapt") is NetAdaptPruner


def test_level_reaches_the_overall_sparsity_in_steps(tmp_path):
    _, pruner = adapt(tmp_path, sparsity=0.3, sparsity_per_iteration=0.1)
    pruned, total = pruned_and_total(pruner)
    # steps of int(0.1 * 348) = 34 weights (rounded down, as NNI): 34, 68, 102, then the last 3 to 105
    assert pruned == math.ceil(0.3 * total)
    assert_masks_in_effect(pruner)
    iterations = {step["iteration"] for step in pruner.history}
    assert iterations == {0, 1, 2, 3}


def test_history_json_records_every_candidate_and_the_choice(tmp_path):
    _, pruner = adapt(tmp_path, sparsity=0.3, sparsity_per_iteration=0.1)
    saved = json.loads((tmp_path / "search_history.json").read_text())
    assert saved["history"] == json.loads(json.dumps(pruner.history))
    first = [step for step in saved["history"] if step["iteration"] == 0]
    # a step is round(0.1 * 348) = 35 weights: fc (24 weights) cannot give them, conv1 (36) can
    assert [step["layer"] for step in first] == ["conv1", "conv2"]
    for iteration in {step["iteration"] for step in saved["history"]}:
        candidates = [step for step in saved["history"] if step["iteration"] == iteration]
        chosen = [step for step in candidates if step["selected"]]
        assert len(chosen) == 1 and chosen[0]["score"] == max(step["score"] for step in candidates)
        for step in candidates:
            assert set(step["sparsities"]) == {"conv1", "conv2", "fc"}
    last = [step for step in saved["history"] if step["selected"]][-1]
    assert saved["sparsities"] == pytest.approx(last["sparsities"]) and saved["score"] == last["score"]


def test_the_model_gets_the_weights_of_the_chosen_candidates(tmp_path):
    def shift_fc_bias(model):
        with torch.no_grad():
            model.fc.bias += 1.0

    original_bias = make_tiny_cnn().fc.bias.detach().clone()
    model, pruner = adapt(tmp_path, sparsity=0.2, sparsity_per_iteration=0.1, fine_tuner=shift_fc_bias,
                          op_types=("Conv2d",))
    iterations = len({step["iteration"] for step in pruner.history})
    assert iterations >= 2
    # each iteration starts from the chosen candidate's weights: one shift per iteration, not per candidate
    assert torch.allclose(model.fc.bias, original_bias + iterations)


def test_l1_prunes_whole_filters(tmp_path):
    _, pruner = adapt(tmp_path, base_algo="l1", sparsity=0.4, sparsity_per_iteration=0.1)
    pruned, total = pruned_and_total(pruner)
    assert pruned >= math.ceil(0.4 * total)
    for wrapper in pruner.wrappers.values():
        assert_filter_structured(wrapper.weight_mask)
    assert_masks_in_effect(pruner)


def test_a_base_algo_that_needs_statistics_is_refused_and_the_model_untouched(tmp_path):
    model = make_tiny_cnn()
    before = snapshot(model)
    pruner = NetAdaptPruner(model, [{"sparsity": 0.3, "op_types": ["Conv2d"]}], fine_tune, negative_loss,
                            base_algo="apoz", experiment_data_dir=str(tmp_path), verbose=False)
    with pytest.raises(ConfigError, match="prunes nothing of layer 'conv1'"):
        pruner.compress()
    assert_untouched(model, before)


def test_the_user_model_is_not_what_the_search_trains(tmp_path):
    seen = []
    model = make_tiny_cnn()
    pruner = NetAdaptPruner(model, [{"sparsity": 0.1, "op_types": ["default"]}], fine_tune,
                            lambda m: seen.append(m) or 0.0, base_algo="level", experiment_data_dir=str(tmp_path),
                            verbose=False)
    pruner.compress()
    assert seen and all(candidate is not model for candidate in seen)


@pytest.mark.parametrize(
    ("arguments", "config", "message"),
    [
        ({"short_term_fine_tuner": None}, None, "short_term_fine_tuner: must be a callable, got None"),
        ({"evaluator": "accuracy"}, None, "evaluator: must be a callable, got str"),
        ({"optimize_mode": "best"}, None, "optimize_mode: must be one of 'maximize', 'minimize', got 'best'"),
        ({"base_algo": "l3"}, None, "base_algo: unknown compressor 'l3'"),
        ({"base_algo": "agp"}, None, "base_algo: 'agp' is not configured by 'sparsity' alone"),
        ({"base_algo": "taylorfo"}, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], "needs the training optimizer"),
        ({"sparsity_per_iteration": 0}, None, "sparsity_per_iteration: must be a number > 0 and <= 1, got 0"),
        ({}, [{"sparsity": 0, "op_types": ["default"]}], "config_list[0].sparsity: 0 is less than or equal"),
    ],
)
def test_bad_input_raises_config_error_and_leaves_the_model_untouched(arguments, config, message):
    model = make_tiny_cnn()
    before = snapshot(model)
    options = {"short_term_fine_tuner": fine_tune, "evaluator": negative_loss, "base_algo": "level", **arguments}
    with pytest.raises(ConfigError) as info:
        NetAdaptPruner(model, config or [{"sparsity": 0.5, "op_types": ["default"]}], verbose=False, **options)
    assert any(message in error for error in info.value.errors), info.value.errors
    assert_untouched(model, before)
