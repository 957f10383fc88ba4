"""AutoCompressPruner: rounds of annealing + ADMM reach the budget, nested rounds, history, bad input."""
from __future__ import annotations

import json
import math

import pytest
import torch

from nncore import ConfigError, get_compressor
from nncore.builtin_pruners.auto_compress import AutoCompressPruner, round_sparsity
from nncore.builtin_pruners.simulated_annealing import AnnealingSchedule
from tests.builtin_pruners.search_helpers import (
    admm_trainer,
    assert_filter_structured,
    assert_masks_in_effect,
    negative_loss,
    pruned_and_total,
)
from tests.conftest import assert_untouched, make_tiny_cnn, snapshot

FAST = {"admm_num_iterations": 1, "admm_training_epochs": 1, "start_temperature": 100, "stop_temperature": 50,
        "cool_down_rate": 0.6}


def auto_compress(tmp_path, base_algo="level", sparsity=0.6, rounds=2, **options):
    model = make_tiny_cnn()
    pruner = AutoCompressPruner(model, [{"sparsity": sparsity, "op_types": ["default"]}], admm_trainer, negative_loss,
                                torch.zeros(1, 1, 6, 6), num_iterations=rounds, base_algo=base_algo,
                                experiment_data_dir=str(tmp_path), seed=0, verbose=False, **{**FAST, **options})
    pruner.compress()
    return model, pruner


def test_registered_under_auto_compress():
    assert get_compressor("auto_compress") is AutoCompressPruner


def test_level_meets_the_overall_sparsity_round_by_round(tmp_path):
    model, pruner = auto_compress(tmp_path, sparsity=0.6, rounds=2)
    pruned, total = pruned_and_total(pruner)
    assert pruned == math.ceil(0.6 * total)
    assert_masks_in_effect(pruner)
    rounds = [step for step in pruner.history if step["phase"] == "admm"]
    assert [step["round"] for step in rounds] == [1, 2]
    for step in rounds:
        target = math.ceil(round_sparsity(0.6, 2, step["round"]) * total - 1e-9)
        assert step["overall_sparsity"] * total == pytest.approx(target)
    # rounds only add to what earlier rounds pruned
    first, second = rounds[0]["sparsities"], rounds[1]["sparsities"]
    assert all(second[name] >= first[name] for name in first)
    annealing = [step for step in pruner.history if step["phase"] == "annealing"]
    assert len(annealing) == 2 * (1 + len(AnnealingSchedule(100, 50, 0.6).temperatures()))
    assert pruner.best_score == rounds[-1]["score"]


def test_history_json_and_trained_weights(tmp_path):
    model, pruner = auto_compress(tmp_path)
    saved = json.loads((tmp_path / "search_history.json").read_text())
    assert saved["history"] == json.loads(json.dumps(pruner.history))
    for step in saved["history"]:
        assert set(step["sparsities"]) == {"conv1", "conv2", "fc"} and isinstance(step["score"], float)
    assert saved["sparsities"] == pytest.approx(pruner.final_sparsities())
    kept = pruner.wrappers["conv2"].weight_mask.bool()
    assert not torch.equal(model.conv2.module.weight[kept], make_tiny_cnn().conv2.weight[kept])  # ADMM trained it
    assert negative_loss(model) == pytest.approx(pruner.best_score, abs=1e-6)


def test_l1_prunes_whole_filters_and_masks_the_batchnorm(tmp_path):
    _, pruner = auto_compress(tmp_path, base_algo="l1", sparsity=0.5)
    pruned, total = pruned_and_total(pruner)
    assert pruned >= math.ceil(0.5 * total)
    for wrapper in pruner.wrappers.values():
        assert_filter_structured(wrapper.weight_mask)
    assert torch.equal(pruner.followers["bn1"].weight_mask, pruner.wrappers["conv1"].weight_mask.flatten(1)[:, 0])
    assert_masks_in_effect(pruner)


def test_speedup_model_is_smaller_and_computes_the_same(tmp_path):
    model, pruner = auto_compress(tmp_path, base_algo="l1", sparsity=0.5)
    small = pruner.speedup_model()
    model.eval()
    small.eval()
    x = torch.randn(5, 1, 6, 6)
    assert torch.allclose(small(x), model(x), atol=1e-5)
    kept_filters = int(pruner.wrappers["conv2"].weight_mask.flatten(1).any(1).sum())
    assert small.conv2.weight.shape[0] == kept_filters < 8
    assert isinstance(model.conv2, type(pruner.wrappers["conv2"]))  # the pruner's model is still wrapped


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"trainer": None}, "trainer: must be a callable, got None"),
        ({"evaluator": object()}, "evaluator: must be a callable, got object"),
        ({"dummy_input": None}, "dummy_input: must be a tensor (or a tuple of tensors), got NoneType"),
        ({"num_iterations": 0}, "num_iterations: must be an int >= 1, got 0"),
        ({"admm_num_iterations": 0}, "admm_num_iterations: must be an int >= 1, got 0"),
        ({"optimize_mode": "Maximize"}, "optimize_mode: must be one of 'maximize', 'minimize', got 'Maximize'"),
        ({"base_algo": 42}, "base_algo: must be the registry name of a pruner"),
    ],
)
def test_bad_input_raises_config_error_and_leaves_the_model_untouched(arguments, message):
    model = make_tiny_cnn()
    before = snapshot(model)
    options = {"trainer": admm_trainer, "evaluator": negative_loss, "dummy_input": torch.zeros(1, 1, 6, 6),
               "base_algo": "level", **arguments}
    with pytest.raises(ConfigError) as info:
        AutoCompressPruner(model, [{"sparsity": 0.5, "op_types": ["default"]}], verbose=False, **options)
    assert any(message in error for error in info.value.errors), info.value.errors
    assert_untouched(model, before)
