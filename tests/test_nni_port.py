"""NNI 1.9's ``examples/model_compress/model_prune_torch.py``, ported by changing the import line.

The example's own code: its ``prune_config`` table, ``NaiveModel``, ``create_pruner`` (pruners built
with NNI's positional ``optimizer``), the ``update_epoch`` / train loop and ``export_model``; then
``apply_compression_results(model, mask_path)`` on a freshly built model, which must come out
smaller and compute what the pruned model computes. Synthetic MNIST-shaped data replaces MNIST.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nncore.builtin_pruners import (  # was: from nni.compression.torch import ...
    ActivationAPoZRankFilterPruner,
    ActivationMeanRankFilterPruner,
    AGPPruner,
    FPGMPruner,
    L1FilterPruner,
    L2FilterPruner,
    LevelPruner,
    SlimPruner,
    TaylorFOWeightFilterPruner,
)
from nncore.builtin_quantizers import QAT_Quantizer
from nncore.speedup import apply_compression_results

prune_config = {
    "level": {"pruner_class": LevelPruner, "config_list": [{"sparsity": 0.5, "op_types": ["default"]}]},
    "agp": {"pruner_class": AGPPruner, "config_list": [{
        "initial_sparsity": 0., "final_sparsity": 0.8, "start_epoch": 0, "end_epoch": 2, "frequency": 1,
        "op_types": ["Conv2d"]}]},
    "slim": {"pruner_class": SlimPruner, "config_list": [{"sparsity": 0.7, "op_types": ["BatchNorm2d"]}]},
    "fpgm": {"pruner_class": FPGMPruner, "config_list": [{"sparsity": 0.5, "op_types": ["Conv2d"]}]},
    "l1filter": {"pruner_class": L1FilterPruner,
                 "config_list": [{"sparsity": 0.5, "op_types": ["Conv2d"], "op_names": ["conv1", "conv2"]}]},
    "l2filter": {"pruner_class": L2FilterPruner, "config_list": [{"sparsity": 0.5, "op_types": ["Conv2d"]}]},
    "mean_activation": {"pruner_class": ActivationMeanRankFilterPruner,
                        "config_list": [{"sparsity": 0.5, "op_types": ["Conv2d"]}]},
    "apoz": {"pruner_class": ActivationAPoZRankFilterPruner,
             "config_list": [{"sparsity": 0.5, "op_types": ["Conv2d"]}]},
    "taylorfo": {"pruner_class": TaylorFOWeightFilterPruner,
                 "config_list": [{"sparsity": 0.5, "op_types": ["Conv2d"]}]},
}
FILTER_PRUNERS = ["fpgm", "l1filter", "l2filter", "mean_activation", "apoz", "taylorfo"]


class NaiveModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.bn1 = nn.BatchNorm2d(self.conv1.out_channels)
        self.bn2 = nn.BatchNorm2d(self.conv2.out_channels)
        self.fc1 = nn.Linear(4 * 4 * 50, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, 2, 2)
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.max_pool2d(x, 2, 2)
        x = x.view(x.size(0), -1)
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return x


def create_pruner(model, pruner_name, optimizer=None, dependency_aware=False, dummy_input=None):
    pruner_class = prune_config[pruner_name]["pruner_class"]
    config_list = prune_config[pruner_name]["config_list"]
    kw_args = {}
    if dependency_aware:
        kw_args["dependency_aware"] = True
        kw_args["dummy_input"] = dummy_input
    pruner = pruner_class(model, config_list, optimizer, **kw_args)
    return pruner


def train(model, train_loader, optimizer):
    model.train()
    for data, target in train_loader:
        optimizer.zero_grad()
        output = model(data)
        loss = F.cross_entropy(output, target)
        loss.backward()
        optimizer.step()


def synthetic_mnist(batches=2, batch_size=16):
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(batch_size, 1, 28, 28, generator=generator), torch.randint(0, 10, (batch_size,), generator=generator))
            for _ in range(batches)]


def prune_and_export(pruner_name, tmp_path, dependency_aware=False, input_shape=None):
    torch.manual_seed(0)
    train_loader = synthetic_mnist()
    dummy_input, _ = train_loader[0]
    model = NaiveModel()
    model_path, mask_path = tmp_path / f"pruned_{pruner_name}.pth", tmp_path / f"mask_{pruner_name}.pth"
    optimizer_finetune = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=1e-4)
    pruner = create_pruner(model, pruner_name, optimizer_finetune, dependency_aware, dummy_input)
    model = pruner.compress()
    for epoch in range(2):
        pruner.update_epoch(epoch)
        train(model, train_loader, optimizer_finetune)
    pruner.export_model(model_path=str(model_path), mask_path=str(mask_path), input_shape=input_shape)
    return model.eval(), model_path, mask_path


def apply_to_fresh_model(model_path, mask_path):
    fresh = NaiveModel()
    fresh.load_state_dict(torch.load(model_path, weights_only=True))
    fresh.eval()
    apply_compression_results(fresh, str(mask_path))
    return fresh


def params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("pruner_name", FILTER_PRUNERS)
def test_filter_pruners_ported_and_shrunk_by_apply_compression_results(pruner_name, tmp_path):
    pruned, model_path, mask_path = prune_and_export(pruner_name, tmp_path, dependency_aware=True)
    fresh = apply_to_fresh_model(model_path, mask_path)
    assert fresh.conv1.out_channels == 10 and fresh.conv2.out_channels == 25  # int(0.5 * 20), int(0.5 * 50)
    assert params(fresh) < params(NaiveModel()) * 0.55
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = pruned(x)
        assert torch.allclose(fresh(x), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_slim_shrinks_with_the_input_shape_given_to_export_model(tmp_path):
    pruned, model_path, mask_path = prune_and_export("slim", tmp_path, input_shape=[1, 1, 28, 28])
    fresh = apply_to_fresh_model(model_path, mask_path)
    masks = torch.load(mask_path, weights_only=True)
    kept = {name: int(masks[name]["weight"].sum()) for name in ("bn1", "bn2")}
    assert sum(kept.values()) <= 70 - int(0.7 * 70) + 1  # a layer emptied by the global ranking keeps one
    assert (fresh.conv1.out_channels, fresh.conv2.out_channels) == (kept["bn1"], kept["bn2"])
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = pruned(x)
        assert torch.allclose(fresh(x), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.parametrize("pruner_name", ["level", "agp"])
def test_fine_grained_pruners_ported_masks_applied_same_output(pruner_name, tmp_path):
    pruned, model_path, mask_path = prune_and_export(pruner_name, tmp_path, input_shape=[1, 1, 28, 28])
    with pytest.warns(UserWarning, match="the masks prune no whole channel"):  # nothing structural to remove
        fresh = apply_to_fresh_model(model_path, mask_path)
    sparsity = 0.8 if pruner_name == "agp" else 0.5
    assert int((fresh.conv2.weight == 0).sum()) >= int(sparsity * fresh.conv2.weight.numel())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(fresh(x), pruned(x), atol=1e-5)


def test_without_a_recorded_input_the_masks_are_applied_and_the_user_is_told(tmp_path):
    _, model_path, mask_path = prune_and_export("l1filter", tmp_path)
    with pytest.warns(UserWarning, match=r"pass dummy_input=<an example input> \(keyword\)"):
        fresh = apply_to_fresh_model(model_path, mask_path)
    assert fresh.conv1.out_channels == 20 and int(fresh.conv1.weight.flatten(1).abs().sum(1).eq(0).sum()) == 10


def test_qat_quantizer_with_the_positional_optimizer():
    model = NaiveModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    config_list = [{"quant_types": ["weight"], "quant_bits": {"weight": 8}, "op_types": ["Conv2d", "Linear"]}]
    quantizer = QAT_Quantizer(model, config_list, optimizer)
    quantizer.compress()
    train(model, synthetic_mnist(batches=1), optimizer)
    weight = model.conv1.module.weight if hasattr(model.conv1, "module") else model.conv1.weight
    assert torch.isfinite(weight).all()
