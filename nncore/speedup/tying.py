"""Parameters shared by several modules (tied input and output embeddings) stay shared after slicing."""
from __future__ import annotations

import torch
from torch import nn

from nncore.speedup.journal import Journal


def tied_parameters(model: nn.Module) -> list[list[tuple[nn.Module, str]]]:
    """Groups of (module, attribute) that hold one and the same parameter."""
    holders: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for attr, param in module._parameters.items():
            if param is not None:
                holders.setdefault(id(param), []).append((module, attr))
    return [group for group in holders.values() if len(group) > 1]


def retie_parameters(groups: list[list[tuple[nn.Module, str]]], journal: Journal) -> None:
    """Make each group share one parameter again when slicing gave its members equal copies."""
    for group in groups:
        first_module, first_attr = group[0]
        shared = first_module._parameters[first_attr]
        for module, attr in group[1:]:
            param = module._parameters[attr]
            if param is shared:
                continue
            if param.shape != shared.shape or not torch.equal(param, shared):
                raise RuntimeError(f"the tied parameter {attr!r} was sliced differently in "
                                   f"{type(first_module).__name__} and {type(module).__name__}")
            journal.touch(module)
            module._parameters[attr] = shared
