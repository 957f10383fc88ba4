"""ADMMPruner: the trainer/callback protocol, the proximal gradient, sparsity and structure of the result."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nncore import ConfigError, get_compressor
from nncore.builtin_pruners.admm import ADMMPruner
from tests.builtin_pruners.search_helpers import (
    X,
    Y,
    admm_trainer,
    assert_filter_structured,
    assert_masks_in_effect,
)
from tests.conftest import assert_untouched, make_tiny_cnn, snapshot


def test_registered_under_admm():
    assert get_compressor("admm") is ADMMPruner


def test_l1_result_meets_the_sparsity_with_whole_filters():
    model = make_tiny_cnn()
    pruner = ADMMPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], admm_trainer, num_iterations=3,
                        training_epochs=2, row=1e-2, verbose=False)
    pruner.compress()
    for name, filters in (("conv1", 4), ("conv2", 8)):
        mask = pruner.wrappers[name].weight_mask
        assert_filter_structured(mask)
        assert int((mask.flatten(1)[:, 0] == 0).sum()) == filters // 2
    assert torch.equal(pruner.followers["bn1"].weight_mask, pruner.wrappers["conv1"].weight_mask.flatten(1)[:, 0])
    assert_masks_in_effect(pruner)
    assert len(pruner.history) == 3


def test_level_result_meets_each_layer_sparsity_exactly():
    model = make_tiny_cnn()
    pruner = ADMMPruner(model, [{"sparsity": 0.7, "op_types": ["default"]}], admm_trainer, num_iterations=2,
                        training_epochs=1, base_algo="level", verbose=False)
    pruner.compress()
    for wrapper in pruner.wrappers.values():
        assert int((wrapper.weight_mask == 0).sum()) == int(0.7 * wrapper.weight_mask.numel())
    assert_masks_in_effect(pruner)


def test_trainer_protocol_and_proximal_gradient():
    """In the first iteration Z = W0 and U = 0, so callback() adds row * (W - W0) to the gradient."""
    row = 0.5
    model = make_tiny_cnn()
    initial = model.conv2.weight.detach().clone()
    calls, added = [], []

    def trainer(model, optimizer, criterion, epoch, callback):
        calls.append((epoch, type(optimizer).__name__, type(criterion).__name__))
        for _ in range(2):
            optimizer.zero_grad()
            criterion(model(X), Y).backward()
            weight = model.conv2.module.weight
            before = weight.grad.clone()
            callback()
            if len(calls) == 1:
                added.append((weight.grad - before, row * (weight.detach() - initial)))
            optimizer.step()

    pruner = ADMMPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], trainer, num_iterations=2,
                        training_epochs=3, row=row, verbose=False)
    pruner.compress()
    assert calls == [(epoch, "Adam", "CrossEntropyLoss") for epoch in (0, 1, 2)] * 2
    assert torch.count_nonzero(added[0][0]) == 0  # first step: W == W0
    assert torch.count_nonzero(added[1][0]) > 0
    for got, expected in added:
        assert torch.allclose(got, expected, atol=1e-7)


def test_the_model_is_trained_before_it_is_masked():
    model = make_tiny_cnn()
    initial = model.conv2.weight.detach().clone()
    pruner = ADMMPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], admm_trainer, num_iterations=1,
                        training_epochs=1, verbose=False)
    pruner.compress()
    kept = pruner.wrappers["conv2"].weight_mask.bool()
    assert not torch.equal(model.conv2.module.weight[kept], initial[kept])


@pytest.mark.parametrize(
    ("arguments", "config", "message"),
    [
        ({"trainer": None}, None, "trainer: must be a callable, got None"),
        ({"num_iterations": 0}, None, "num_iterations: must be an int >= 1, got 0"),
        ({"training_epochs": 1.5}, None, "training_epochs: must be an int >= 1, got 1.5"),
        ({"row": -1}, None, "row: must be a number >= 0, got -1"),
        ({"base_algo": "l7"}, None, "base_algo: unknown compressor 'l7'"),
        ({}, [{"sparsity": 0.5, "op_names": ["bn1"]}], "cannot compress 'bn1' (BatchNorm2d)"),
        ({}, [{"sparsity": 1.0, "op_types": ["Conv2d"]}], "config_list[0].sparsity: 1.0 is greater than or equal"),
    ],
)
def test_bad_input_raises_config_error_and_leaves_the_model_untouched(arguments, config, message):
    model = make_tiny_cnn()
    before = snapshot(model)
    options = {"trainer": admm_trainer, **arguments}
    with pytest.raises(ConfigError) as info:
        ADMMPruner(model, config or [{"sparsity": 0.5, "op_types": ["Conv2d"]}], verbose=False, **options)
    assert any(message in error for error in info.value.errors), info.value.errors
    assert_untouched(model, before)


def test_a_trainer_that_skips_the_callback_still_gets_masks():
    model = make_tiny_cnn()

    def plain_trainer(model, optimizer, criterion, epoch, callback):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(X), Y).backward()
        optimizer.step()

    pruner = ADMMPruner(model, [{"sparsity": 0.25, "op_types": ["Conv2d"]}], plain_trainer, num_iterations=1,
                        training_epochs=1, verbose=False)
    pruner.compress()
    assert int((pruner.wrappers["conv2"].weight_mask.flatten(1)[:, 0] == 0).sum()) == 2
