"""Compressor / Pruner bases: wrapping, masks through optimizer steps, unwrapping."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from nncore.builtin_pruners import AGPPruner, LevelPruner
from nncore.errors import ConfigError, NncoreError
from nncore.wrapper import ModuleWrapper

CONFIG = [{"sparsity": 0.5, "op_types": ["default"]}]


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 5) -> None:
    torch.manual_seed(1)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(torch.randn(4, 1, 6, 6)).pow(2).mean()
        loss.backward()
        optimizer.step()


def test_compress_returns_the_model_with_real_module_wrappers_holding_mask_buffers(tiny_cnn):
    originals = {name: getattr(tiny_cnn, name) for name in ("conv1", "conv2", "fc")}
    model = LevelPruner(tiny_cnn, CONFIG).compress()
    assert model is tiny_cnn
    for name, original in originals.items():
        wrapper = getattr(model, name)
        assert isinstance(wrapper, ModuleWrapper) and isinstance(wrapper, nn.Module)
        assert wrapper.module is original
        buffers = dict(wrapper.named_buffers())
        assert buffers["weight_mask"].shape == original.weight.shape
        assert buffers["bias_mask"].shape == original.bias.shape
        assert (original.weight[buffers["weight_mask"] == 0] == 0).all()
    assert isinstance(model.bn1, nn.BatchNorm2d)


def test_masks_are_in_effect_in_the_forward(tiny_cnn):
    x = torch.randn(2, 1, 6, 6)
    pruner = LevelPruner(tiny_cnn, CONFIG)
    pruner.compress()
    reference = copy.deepcopy(pruner.unwrap_model())
    with torch.no_grad():
        for name in ("conv1", "conv2", "fc"):
            assert (getattr(reference, name).weight == 0).sum() > 0
    torch.testing.assert_close(tiny_cnn(x), reference(x))


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    lambda p: torch.optim.Adam(p, lr=0.01),
    lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
])
def test_masked_weights_stay_zero_through_optimizer_steps(tiny_cnn, make_optimizer):
    optimizer = make_optimizer(tiny_cnn.parameters())
    train_steps(tiny_cnn, optimizer, steps=2)  # optimizer state exists before pruning
    pruner = LevelPruner(tiny_cnn, CONFIG)
    pruner.compress()
    train_steps(tiny_cnn, optimizer, steps=5)
    for wrapper in pruner.wrappers.values():
        weight = wrapper.module.weight
        assert (weight[wrapper.weight_mask == 0] == 0).all()
        assert (weight[wrapper.weight_mask == 1] != 0).any()


def test_update_epoch_and_step_exist_and_change_nothing_for_a_one_shot_pruner(tiny_cnn):
    pruner = LevelPruner(tiny_cnn, CONFIG)
    pruner.compress()
    masks = pruner.masks()
    pruner.update_epoch(3)
    pruner.step()
    assert all(torch.equal(masks[n]["weight"], m["weight"]) for n, m in pruner.masks().items())


@pytest.mark.parametrize("epoch", [-1, 1.5, "2", True])
def test_update_epoch_rejects_what_is_not_an_epoch(tiny_cnn, epoch):
    pruner = LevelPruner(tiny_cnn, CONFIG)
    with pytest.raises(ConfigError, match="epoch must be an int >= 0"):
        pruner.update_epoch(epoch)


def test_unwrapping_restores_the_original_module_objects(tiny_cnn):
    originals = dict(tiny_cnn.named_modules())
    pruner = LevelPruner(tiny_cnn, CONFIG)
    pruner.compress()
    model = pruner.unwrap_model()
    assert dict(model.named_modules()).keys() == originals.keys()
    assert all(module is originals[name] for name, module in model.named_modules())
    assert pruner.wrappers == {}


def test_after_unwrapping_optimizer_steps_no_longer_touch_the_weights(tiny_cnn):
    pruner = LevelPruner(tiny_cnn, CONFIG)
    pruner.compress()
    pruner.unwrap_model()
    train_steps(tiny_cnn, torch.optim.SGD(tiny_cnn.parameters(), lr=0.1), steps=1)
    assert (tiny_cnn.conv1.weight != 0).all()


def test_compressing_twice_is_an_error(tiny_cnn):
    pruner = LevelPruner(tiny_cnn, CONFIG)
    pruner.compress()
    with pytest.raises(NncoreError, match="compress\\(\\) was already called"):
        pruner.compress()


def test_a_model_that_is_not_a_module_is_refused():
    with pytest.raises(ConfigError, match="model must be a torch.nn.Module, got dict"):
        LevelPruner({}, CONFIG)


def test_layers_inside_sequentials_are_wrapped_and_named():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2)))
    pruner = AGPPruner(model, [{"final_sparsity": 0.5, "end_epoch": 2, "op_types": ["Linear"]}])
    pruner.compress()
    assert list(pruner.wrappers) == ["0", "2.0"]
    assert isinstance(model[2][0], ModuleWrapper) and model[2][0].name == "2.0"


def test_masks_stay_in_effect_when_the_pruner_object_is_dropped(tiny_cnn):
    import gc

    model = LevelPruner(tiny_cnn, CONFIG).compress()  # the pruner is not kept anywhere
    gc.collect()
    masks = {name: module.weight_mask.clone() for name, module in model.named_modules() if isinstance(module, ModuleWrapper)}
    train_steps(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3), steps=3)
    for name, mask in masks.items():
        assert (model.get_submodule(name).module.weight[mask == 0] == 0).all()


def test_a_deep_copy_of_a_compressed_model_keeps_its_masks_through_optimizer_steps(tiny_cnn):
    pruner = LevelPruner(tiny_cnn, CONFIG)
    pruner.compress()
    clone = copy.deepcopy(tiny_cnn)
    train_steps(clone, torch.optim.Adam(clone.parameters(), lr=0.05), steps=3)
    for name in pruner.wrappers:
        wrapper = clone.get_submodule(name)
        assert (wrapper.module.weight[wrapper.weight_mask == 0] == 0).all()
