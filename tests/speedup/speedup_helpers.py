"""Masks for tests: random filter pruning shared within coupled groups, extended to BatchNorm."""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
from torch import nn

from nncore.speedup.masks import apply_masks
from nncore.utils.dependency import ChannelDependency


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so a kept channel is visible."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)
    return model.eval()


def bn_after(model: nn.Module) -> dict[str, str]:
    """Conv name -> name of the BatchNorm applied directly to its output."""
    graph = fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    found = {}
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            source = node.args[0]
            if isinstance(source, fx.Node) and source.op == "call_module":
                found[str(source.target)] = str(node.target)
    return found


def filter_masks(model: nn.Module, dummy: torch.Tensor, ratio: float, seed: int = 0,
                 skip: tuple[str, ...] = ()) -> dict:
    """Prune ``ratio`` of the output channels of every Conv/Linear group (same indices within a
    coupled group) and the BatchNorm after each; layers in ``skip`` (and their groups) untouched."""
    generator = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    after = bn_after(model)
    masks: dict = {}
    for group in sorted(ChannelDependency(model, dummy, depthwise=True).dependency_sets, key=sorted):
        if any(name in skip for name in group):
            continue
        count = modules[next(iter(group))].weight.shape[0]
        pruned = torch.randperm(count, generator=generator)[: int(count * ratio)]
        for name in group:
            module = modules[name]
            weight = torch.ones_like(module.weight)
            weight[pruned] = 0
            bias = None if module.bias is None else torch.ones_like(module.bias)
            if bias is not None:
                bias[pruned] = 0
            masks[name] = {"weight": weight, "bias": bias}
            if name in after:
                bn = modules[after[name]]
                keep = torch.ones(bn.num_features)
                keep[pruned] = 0
                masks[after[name]] = {"weight": keep, "bias": keep.clone()}
    return masks


def masked_copy(model: nn.Module, masks: dict) -> nn.Module:
    """The reference: a copy of ``model`` with every weight multiplied by its mask."""
    reference = copy.deepcopy(model)
    apply_masks(reference, masks)
    return reference.eval()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def assert_same_function(model: nn.Module, reference: nn.Module, shape: tuple, seed: int = 1) -> None:
    """Outputs on random inputs agree within 1e-4 of the output scale."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(2):
        x = torch.randn(*shape, generator=generator)
        with torch.no_grad():
            expected, got = reference(x), model(x)
        assert got.shape == expected.shape
        difference = (got - expected).abs().max().item()
        assert difference <= 1e-4 * expected.abs().max().item() + 1e-6, difference


def last_linear(model: nn.Module) -> str:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
