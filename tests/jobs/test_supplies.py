"""What a job gives an algorithm: declared supplies, the schedule, the trainer contract."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

import nncore
from nncore.cli import CommandLineError
from nncore.data import JobData, tensor_loaders
from nncore.jobs.supplies import SUPPLIES, JobSupplies, check_needs, job_config_list, schedule


def tiny_job_data() -> JobData:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, generator=generator)
    y = torch.arange(12) % 2
    train, test = tensor_loaders(x, y, x, y, batch_size=4)
    return JobData(train, test, (1, 3), "tiny")


def test_every_builtin_declares_what_it_needs() -> None:
    for info in nncore.list_compressors():
        check_needs(info.cls, info.name)  # raises when a required argument is not supplied


def test_schedule_scales_with_the_fine_tuning_epochs() -> None:
    assert schedule(0.25, 15) == {"sparsity": 0.25, "pruning_epochs": 7, "pruning_rounds": 3, "kept_fraction": 0.75,
                                  "search_steps": 60, "search_warmup": 30}
    assert schedule(0.5, 0) == {"sparsity": 0.5, "pruning_epochs": 1, "pruning_rounds": 3, "kept_fraction": 0.5,
                                "search_steps": 4, "search_warmup": 2}
    agp = nncore.get_compressor("agp")
    assert job_config_list(agp, 0.7, 10) == [{"final_sparsity": 0.7, "end_epoch": 5, "op_types": ["default"]}]
    assert job_config_list(nncore.get_compressor("l1"), 0.3, 10) == [{"sparsity": 0.3, "op_types": ["default"]}]
    assert set(schedule(0.5, 1)) <= set(SUPPLIES)


def test_trainer_runs_one_epoch_with_the_callback_between_backward_and_step() -> None:
    model = nn.Linear(3, 2)
    supplies = JobSupplies(model, tiny_job_data(), lr=0.1, output=Path("."), seed=0, verbose=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    events = []
    optimizer.register_step_post_hook(lambda *args: events.append("step"))

    def callback() -> None:
        events.append("callback" if model.weight.grad is not None else "callback before backward")

    loss = supplies.value("trainer")(model, optimizer, nn.CrossEntropyLoss(), 0, callback)
    assert events == ["callback", "step"] * 3  # 12 samples in batches of 4
    with torch.no_grad():  # lr 0: every batch saw the same weights, so the loss is their mean
        expected = sum(float(nn.functional.cross_entropy(model(x), y)) for x, y in supplies.data.train_loader) / 3
    assert loss == pytest.approx(expected)


def test_supplies_are_made_once_and_the_optimizer_trains_the_model() -> None:
    model = nn.Linear(3, 2)
    supplies = JobSupplies(model, tiny_job_data(), lr=0.1, output=Path("out"), seed=4, verbose=False,
                           sparsity=0.25, finetune_epochs=8)
    assert supplies.value("optimizer") is supplies.optimizer
    assert {id(p) for p in supplies.optimizer.param_groups[0]["params"]} == {id(p) for p in model.parameters()}
    assert supplies.optimizer.param_groups[0]["lr"] == 0.1
    assert supplies.value("evaluator")(model) == pytest.approx(
        float((model(supplies.data.test_loader.dataset.tensors[0]).argmax(1) == torch.arange(12) % 2).float().mean()))
    assert [supplies.value(n) for n in ("output_dir", "seed", "verbose", "sparsity", "pruning_epochs")] == [
        "out", 4, False, 0.25, 4]
    assert supplies.value("dummy_input").shape == (1, 3)


def test_an_unsupplied_requirement_is_named() -> None:
    class Needs(nncore.compressor.Pruner):
        name = "needs"

        def __init__(self, model, config_list, teacher, steps=3, *, plugins=()):
            super().__init__(model, config_list, plugins=plugins)

    with pytest.raises(CommandLineError, match="^--algo x: Needs needs 'teacher', which it does not ask a job for"):
        check_needs(Needs, "--algo x")
    Needs.job_arguments = {"teacher": "evaluator"}
    check_needs(Needs, "--algo x")
