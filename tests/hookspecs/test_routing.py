"""The routing rule: user plugins run before the algorithm; firstresult vs broadcast hooks."""
from __future__ import annotations

import pytest
import torch

import nncore
from nncore.builtin_pruners import AGPPruner, LevelPruner
from nncore.errors import PluginError


class KeepConv1Dense:
    """Overrides one layer: conv1 is never pruned; every other layer falls through."""

    @nncore.hookimpl
    def calc_mask(self, wrapper):
        if wrapper.name != "conv1":
            return None
        return {"weight_mask": torch.ones_like(wrapper.module.weight), "bias_mask": None}


class Recorder:
    def __init__(self):
        self.calls = []

    @nncore.hookimpl
    def step(self, compressor):
        self.calls.append(("step", type(compressor).__name__))

    @nncore.hookimpl
    def update_epoch(self, epoch):
        self.calls.append(("epoch", epoch))


def test_a_user_plugin_overrides_one_layer_and_the_algorithm_answers_the_rest(tiny_cnn):
    pruner = LevelPruner(tiny_cnn, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], plugins=[KeepConv1Dense()])
    pruner.compress()
    assert pruner.wrappers["conv1"].weight_mask.sum().item() == tiny_cnn.conv1.module.weight.numel()
    conv2_mask = pruner.wrappers["conv2"].weight_mask
    assert (conv2_mask == 0).sum().item() == round(0.5 * conv2_mask.numel())


def test_the_algorithm_answers_first_when_the_plugin_is_marked_trylast(tiny_cnn):
    class Late(KeepConv1Dense):
        @nncore.hookimpl(trylast=True)
        def calc_mask(self, wrapper):
            return super().calc_mask(wrapper)

    pruner = LevelPruner(tiny_cnn, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], plugins=[Late()])
    pruner.compress()
    mask = pruner.wrappers["conv1"].weight_mask
    assert (mask == 0).sum().item() == round(0.5 * mask.numel())


def test_step_and_update_epoch_are_broadcast_to_plugins(tiny_cnn):
    recorder = Recorder()
    config = [{"final_sparsity": 0.5, "end_epoch": 3, "op_types": ["Conv2d"]}]
    pruner = AGPPruner(tiny_cnn, config, plugins=[recorder])
    pruner.compress()
    pruner.step()
    pruner.update_epoch(1)
    assert recorder.calls == [("step", "AGPPruner"), ("epoch", 1)]
    assert pruner.epoch == 1  # the algorithm's own update_epoch ran as well


def test_a_validate_config_plugin_adds_its_errors_to_the_schema_check(tiny_cnn):
    class NoFc:
        @nncore.hookimpl
        def validate_config(self, config_list):
            return [f"config_list[{i}]: fc is off limits" for i, e in enumerate(config_list) if "fc" in e.get("op_names", [])]

    with pytest.raises(nncore.ConfigError, match=r"config_list\[0\]: fc is off limits"):
        LevelPruner(tiny_cnn, [{"sparsity": 0.5, "op_names": ["fc"]}], plugins=[NoFc()])


def test_a_user_plugin_with_a_misspelled_argument_is_refused_by_name(tiny_cnn):
    class Typo:
        @nncore.hookimpl
        def step(self, compresor):
            pass

    with pytest.raises(PluginError, match=r"(?s)plugins\[0\].*compresor"):
        LevelPruner(tiny_cnn, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], plugins=[Typo()])


def test_no_answer_for_a_layer_is_a_plugin_error(tiny_cnn):
    class Silent(LevelPruner):
        name = "silent"

        @nncore.hookimpl(tryfirst=True)
        def calc_mask(self, wrapper):
            return None

    class NoAnswer:
        pass

    pruner = Silent(tiny_cnn, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner._hooks.unregister(pruner)
    pruner._hooks.register(NoAnswer())
    with pytest.raises(PluginError, match="no calc_mask implementation answered for layer 'conv1'"):
        pruner.compress()


def test_a_compressor_class_that_hides_the_public_step_is_refused_at_definition():
    with pytest.raises(PluginError, match=r"specname='step'"):
        class Shadowing(LevelPruner):
            @nncore.hookimpl
            def step(self):
                pass
