"""LotteryTicketPruner: the sparsity schedule, nested masks and rewinding of weights, optimizer, scheduler."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nncore import ConfigError, NncoreError, get_compressor
from nncore.builtin_pruners.lottery import LotteryTicketPruner
from tests.conftest import assert_untouched, make_tiny_cnn, snapshot

FINAL, ROUNDS = 0.8, 3
LAYERS = ("conv1", "conv2", "fc")


def train_a_little(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler=None, steps: int = 3) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(4, 1, 6, 6, generator=generator)
        y = torch.randint(0, 3, (4,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def build(reset_weights: bool = True):
    model = make_tiny_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    config = [{"sparsity": FINAL, "prune_iterations": ROUNDS, "op_types": ["default"]}]
    pruner = LotteryTicketPruner(model, config, optimizer, scheduler, reset_weights=reset_weights)
    return model, optimizer, scheduler, pruner


def test_registered_under_lottery():
    assert get_compressor("lottery") is LotteryTicketPruner


def test_rounds_rewind_survivors_and_follow_the_schedule():
    model, optimizer, scheduler, pruner = build()
    initial = {name: getattr(model, name).weight.detach().clone() for name in LAYERS}
    pruner.compress()
    assert list(pruner.get_prune_iterations()) == [0, 1, 2, 3]
    previous_masks = {name: torch.ones_like(initial[name]) for name in LAYERS}
    for round_index in pruner.get_prune_iterations():
        pruner.prune_iteration_start()
        expected_sparsity = 1 - (1 - FINAL) ** (round_index / ROUNDS)
        for name in LAYERS:
            wrapper = pruner.wrappers[name]
            mask = wrapper.weight_mask
            assert int((mask == 0).sum()) == int(expected_sparsity * mask.numel())
            # survivors are rewound to their initial value, the pruned ones are zero
            assert torch.equal(wrapper.module.weight, initial[name] * mask)
            # masks are nested: what was pruned stays pruned
            assert bool((mask <= previous_masks[name]).all())
            previous_masks[name] = mask.clone()
        assert optimizer.state_dict()["state"] == {}
        assert scheduler.last_epoch == 0 and optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
        train_a_little(model, optimizer, scheduler)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    total = sum(pruner.wrappers[n].weight_mask.numel() for n in LAYERS)
    pruned = sum(int((pruner.wrappers[n].weight_mask == 0).sum()) for n in LAYERS)
    assert pruned == sum(int(FINAL * pruner.wrappers[n].weight_mask.numel()) for n in LAYERS)
    assert pruned / total == pytest.approx(FINAL, abs=0.01)


def test_each_round_prunes_the_smallest_trained_survivors():
    model, optimizer, scheduler, pruner = build()
    pruner.compress()
    pruner.prune_iteration_start()
    train_a_little(model, optimizer, scheduler)
    trained = model.fc.module.weight.detach().abs().flatten().clone()
    pruner.prune_iteration_start()
    count = int((1 - (1 - FINAL) ** (1 / ROUNDS)) * trained.numel())
    expected = torch.ones_like(trained)
    expected[torch.argsort(trained)[:count]] = 0
    assert torch.equal(pruner.wrappers["fc"].weight_mask.flatten(), expected)


def test_without_reset_the_trained_weights_are_kept():
    model, optimizer, scheduler, pruner = build(reset_weights=False)
    pruner.compress()
    pruner.prune_iteration_start()
    train_a_little(model, optimizer, scheduler)
    trained = model.conv2.module.weight.detach().clone()
    pruner.prune_iteration_start()
    assert torch.equal(model.conv2.module.weight, trained * pruner.wrappers["conv2"].weight_mask)


def test_too_many_rounds_and_start_before_compress_raise():
    _, _, _, pruner = build()
    with pytest.raises(NncoreError, match="call compress"):
        pruner.prune_iteration_start()
    pruner.compress()
    for _ in pruner.get_prune_iterations():
        pruner.prune_iteration_start()
    with pytest.raises(NncoreError, match="already started"):
        pruner.prune_iteration_start()


@pytest.mark.parametrize(
    ("config", "optimizer_given", "message"),
    [
        ([{"sparsity": 0.8, "prune_iterations": 0, "op_types": ["default"]}], True,
         "config_list[0].prune_iterations: 0 is less than the minimum of 1"),
        ([{"sparsity": 0.8, "op_types": ["default"]}], True, "config_list[0].prune_iterations: required key is missing"),
        ([{"sparsity": 0.8, "prune_iterations": 2, "op_types": ["Conv2d"]},
          {"sparsity": 0.5, "prune_iterations": 3, "op_names": ["fc"]}], True,
         "config_list[1].prune_iterations: 3 differs from config_list[0].prune_iterations 2"),
        ([{"sparsity": 0.8, "prune_iterations": 2, "op_types": ["default"]}], False, "optimizer:"),
    ],
)
def test_bad_input_raises_config_error_and_leaves_the_model_untouched(config, optimizer_given, message):
    model = make_tiny_cnn()
    before = snapshot(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1) if optimizer_given else None
    with pytest.raises(ConfigError) as info:
        LotteryTicketPruner(model, config, optimizer)
    assert any(message in error for error in info.value.errors)
    assert_untouched(model, before)
