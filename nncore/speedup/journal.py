"""Editing a model in place, with an undo log so that a failed speedup leaves it as it was."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nncore.artifacts import MaskDict


class Journal:
    """Undo log: the attribute dictionaries of every module before its first change."""

    def __init__(self) -> None:
        self.saved: dict[int, tuple] = {}

    def touch(self, module: nn.Module) -> None:
        """Remember ``module`` as it is now (only the first time)."""
        if id(module) not in self.saved:
            self.saved[id(module)] = (module, type(module), dict(module.__dict__), dict(module._parameters),
                                      dict(module._buffers), dict(module._modules))

    def rollback(self) -> None:
        """Put every touched module back as it was."""
        for module, klass, attributes, parameters, buffers, modules in self.saved.values():
            module.__class__ = klass
            module.__dict__.clear()
            module.__dict__.update(attributes)
            module.__dict__["_parameters"] = parameters
            module.__dict__["_buffers"] = buffers
            module.__dict__["_modules"] = modules
        self.saved.clear()


@torch.no_grad()
def mask_weights(model: nn.Module, masks: MaskDict, journal: Journal, skip_weights: frozenset = frozenset()) -> None:
    """Masked weights as new parameters (the old ones stay untouched for a rollback).

    Modules in ``skip_weights`` get only their bias masked (their weight is masked later,
    after slicing, by :func:`zero_filters`).
    """
    for name, entry in masks.items():
        module = model.get_submodule(name)
        journal.touch(module)
        for key, mask in entry.items():
            param = getattr(module, key, None)
            if key == "weight" and name in skip_weights:
                continue
            if mask is not None and param is not None:
                value = param.detach() * mask.to(device=param.device, dtype=param.dtype)
                setattr(module, key, nn.Parameter(value, requires_grad=param.requires_grad)
                        if isinstance(param, nn.Parameter) else value)


def filter_masks(masks: MaskDict) -> dict[str, torch.Tensor]:
    """Module name -> its zero filters, for masks that prune whole filters and nothing else
    (every row all ones or all zeros). Those weights need no full multiplication."""
    found = {}
    for name, entry in masks.items():
        mask = entry.get("weight")
        if mask is None or mask.dim() < 2 or not mask.is_floating_point():
            continue
        flat = mask.detach().reshape(mask.shape[0], -1)
        rows = flat @ flat.new_ones(flat.shape[1])
        if bool(((rows == 0) | (rows == flat.shape[1])).all()):  # 0/1 masks: full rows are all ones
            found[name] = rows == 0
    return found


@torch.no_grad()
def zero_filters(module: nn.Module, zero_rows: torch.Tensor, kept_rows, journal: Journal) -> None:
    """Zero the masked filters still present in ``module.weight`` (rows ``kept_rows`` of the
    original; ``None`` when the module was not sliced, so its weight is still the user's)."""
    if kept_rows is None:
        if bool(zero_rows.any()):
            journal.touch(module)
            weight = module.weight
            value = weight.detach() * (~zero_rows).to(weight.dtype).view(-1, *([1] * (weight.dim() - 1)))
            module.weight = nn.Parameter(value, requires_grad=weight.requires_grad)
        return
    remaining = zero_rows[torch.as_tensor(kept_rows, dtype=torch.long)]
    if bool(remaining.any()):
        module.weight.data[remaining] = 0  # a fresh tensor made by slicing, not the user's


def owner_of(root: nn.Module, target: str) -> nn.Module:
    *path, _ = target.split(".")
    owner = root
    for part in path:
        owner = getattr(owner, part)
    return owner


def use_graph_forward(model: nn.Module, forward: Any) -> None:
    """Give ``model`` the rewritten graph's ``forward`` (the original code has literal sizes that
    no longer hold). Done by switching to a subclass, so ``copy.deepcopy`` keeps it."""
    base = type(model)
    if getattr(base, "_nncore_sped_up", False):
        base = base.__mro__[1]
    model.__class__ = type(base.__name__, (base,), {
        "forward": forward, "_nncore_sped_up": True, "__module__": base.__module__,
        "__doc__": f"{base.__name__} after nncore speedup (forward rewritten for the new sizes)."})


def get_attr(root: nn.Module, target: str) -> Any:
    value = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def has_attr(root: nn.Module, target: str) -> bool:
    try:
        get_attr(root, target)
        return True
    except AttributeError:
        return False


def set_attr(root: nn.Module, target: str, value: torch.Tensor) -> None:
    *path, last = target.split(".")
    owner = root
    for part in path:
        owner = getattr(owner, part)
    old = getattr(owner, last, None)
    if isinstance(old, nn.Parameter) or isinstance(value, nn.Parameter):
        value = nn.Parameter(value.detach().clone(), requires_grad=getattr(old, "requires_grad", True))
    setattr(owner, last, value)


def replace_module(root: nn.Module, name: str, module: nn.Module) -> None:
    *path, last = name.split(".")
    owner = root
    for part in path:
        owner = getattr(owner, part)
    setattr(owner, last, module)
