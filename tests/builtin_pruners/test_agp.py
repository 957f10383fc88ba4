"""AGPPruner: Zhu & Gupta's cubic schedule driven by update_epoch, over any registered pruner."""
from __future__ import annotations

import pytest

import nncore
from nncore.builtin_pruners import AGP_Pruner, AGPPruner
from nncore.builtin_pruners.agp import agp_sparsity
from nncore.config import LayerConfig
from nncore.errors import ConfigError, UnknownCompressorError


def schedule(**options) -> LayerConfig:
    base = {"initial_sparsity": 0.0, "final_sparsity": 0.8, "start_epoch": 0, "end_epoch": 10, "frequency": 1}
    return LayerConfig(name="x", op_type="Linear", options={**base, **options})


def test_the_cubic_schedule_by_hand():
    config = schedule()  # span = 9: masks updated at epochs 0..9, final at 9
    expected = {e: 0.8 + (0.0 - 0.8) * (1 - e / 9) ** 3 for e in range(10)}
    for epoch, value in expected.items():
        assert agp_sparsity(config, epoch) == pytest.approx(value)
    assert agp_sparsity(config, 0) == 0.0
    assert agp_sparsity(config, 9) == pytest.approx(0.8)
    assert agp_sparsity(config, 25) == 0.8


def test_frequency_holds_the_sparsity_between_pruning_epochs():
    config = schedule(initial_sparsity=0.2, start_epoch=2, end_epoch=11, frequency=3)
    # span = ((11 - 2 - 1) // 3) * 3 = 6: pruning at epochs 2, 5, 8
    s5 = 0.8 + (0.2 - 0.8) * (1 - 3 / 6) ** 3
    assert agp_sparsity(config, 2) == pytest.approx(0.2)
    assert agp_sparsity(config, 5) == pytest.approx(s5) == agp_sparsity(config, 6)
    assert agp_sparsity(config, 8) == pytest.approx(0.8)


def test_update_epoch_drives_the_masks(tiny_cnn):
    config = [{"initial_sparsity": 0.0, "final_sparsity": 0.75, "start_epoch": 0, "end_epoch": 4, "frequency": 1,
               "op_types": ["Conv2d"]}]
    pruner = AGP_Pruner(tiny_cnn, config, pruning_algorithm="level")
    pruner.compress()
    mask = pruner.wrappers["conv2"].weight_mask
    counts = [(mask == 0).sum().item()]
    for epoch in range(1, 5):
        pruner.update_epoch(epoch)
        counts.append((mask == 0).sum().item())
    n = mask.numel()  # span = 3: sparsities 0, s(1), s(2), 0.75, 0.75
    expected = [int((0.75 - 0.75 * (1 - e / 3) ** 3) * n) for e in (0, 1, 2, 3, 3)]
    assert counts == expected
    assert counts[-1] == int(0.75 * n)


def test_pruned_weights_stay_pruned_as_sparsity_grows(tiny_cnn):
    pruner = AGPPruner(tiny_cnn, [{"final_sparsity": 0.9, "end_epoch": 5, "op_types": ["Conv2d"]}])
    pruner.compress()
    previous = pruner.wrappers["conv2"].weight_mask.clone()
    for epoch in range(1, 6):
        pruner.update_epoch(epoch)
        current = pruner.wrappers["conv2"].weight_mask
        assert (current[previous == 0] == 0).all()
        previous = current.clone()


def test_the_alias_is_the_same_class_and_registered_as_agp():
    assert AGP_Pruner is AGPPruner is nncore.get_compressor("agp")


def test_an_unknown_pruning_algorithm_names_the_known_ones(tiny_cnn):
    with pytest.raises(UnknownCompressorError, match=r"'lvl'.*Did you mean 'level'.*Known compressors:.*level"):
        AGPPruner(tiny_cnn, [{"final_sparsity": 0.5, "end_epoch": 2, "op_types": ["Conv2d"]}], pruning_algorithm="lvl")


def test_agp_cannot_schedule_itself(tiny_cnn):
    with pytest.raises(ConfigError, match="not a one-shot pruner AGP can schedule"):
        AGPPruner(tiny_cnn, [{"final_sparsity": 0.5, "end_epoch": 2, "op_types": ["Conv2d"]}], pruning_algorithm="agp")


def test_inconsistent_schedules_are_config_errors(tiny_cnn):
    with pytest.raises(ConfigError) as caught:
        AGPPruner(tiny_cnn, [{"initial_sparsity": 0.6, "final_sparsity": 0.5, "start_epoch": 3, "end_epoch": 3,
                              "op_types": ["Conv2d"]}])
    assert caught.value.errors == [
        "config_list[0].end_epoch: 3 must be greater than start_epoch 3",
        "config_list[0].final_sparsity: 0.5 is below initial_sparsity 0.6",
    ]


def test_the_seed_example_runs_unchanged_but_for_the_import(tiny_cnn):
    config_list = [{"initial_sparsity": 0, "final_sparsity": 0.8, "start_epoch": 0, "end_epoch": 10, "frequency": 1,
                    "op_types": ["default"]}]
    pruner = AGP_Pruner(tiny_cnn, config_list, pruning_algorithm="level")
    pruner.compress()
    for epoch in range(10):
        pruner.update_epoch(epoch)
    mask = pruner.wrappers["fc"].weight_mask
    assert (mask == 0).sum().item() == int(0.8 * mask.numel())
    assert pruner.current_sparsity("fc") == pytest.approx(0.8)
