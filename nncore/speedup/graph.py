"""Tracing: one torch.fx graph of the model, with the values of one real forward pass.

Choice recorded: ``torch.fx`` symbolic tracing. It sees functional calls, tensor methods and
Python operators (residual adds, ``cat``, ``view``, channel shuffle, hand-written attention) and
keeps module boundaries, which the shrinking rules need. A submodule whose ``forward`` cannot be
traced (data-dependent control flow, ...) does not make the whole model fail: it becomes an
opaque leaf, i.e. a barrier that keeps the channels flowing into and out of it.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import nn

from nncore.errors import SpeedupError


class _Tracer(fx.Tracer):
    def __init__(self, leaf_names: set[str], leaf_types: tuple[type, ...]) -> None:
        super().__init__()
        self.leaf_names = leaf_names
        self.leaf_types = leaf_types

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if qualified_name in self.leaf_names or isinstance(module, self.leaf_types):
            return True
        return super().is_leaf_module(module, qualified_name)


def _traces(module: nn.Module, leaf_names: set[str], prefix: str, leaf_types) -> bool:
    local = {name[len(prefix) + 1:] if prefix else name for name in leaf_names
             if not prefix or name.startswith(prefix + ".")}
    try:
        _Tracer(local, leaf_types).trace(module)
        return True
    except Exception:
        return False


def _untraceable_module(model: nn.Module, leaf_names: set[str], leaf_types) -> str | None:
    """The deepest module that fails to trace although all its children trace."""
    for name, module in reversed(list(model.named_modules())):
        if name in leaf_names or any(name.startswith(leaf + ".") for leaf in leaf_names):
            continue
        if name and _Tracer(set(), leaf_types).is_leaf_module(module, name):
            continue
        if not _traces(module, leaf_names, name, leaf_types):
            return name
    return None


def trace(model: nn.Module, leaf_types: tuple[type, ...] = ()) -> tuple[fx.GraphModule, list[str]]:
    """Trace ``model``; returns the graph module (sharing ``model``'s submodules) and the
    names of submodules that had to be kept opaque."""
    leaf_names: set[str] = set()
    for _ in range(len(list(model.modules())) + 1):
        try:
            graph = _Tracer(leaf_names, leaf_types).trace(model)
            return fx.GraphModule(model, graph), sorted(leaf_names)
        except Exception as exc:
            culprit = _untraceable_module(model, leaf_names, leaf_types)
            if not culprit:
                raise SpeedupError(
                    f"torch.fx cannot trace the forward of {type(model).__name__}: "
                    f"{type(exc).__name__}: {exc}") from exc
            leaf_names.add(culprit)
    raise SpeedupError(f"torch.fx cannot trace {type(model).__name__}")


def _shape_only(value: Any) -> Any:
    """Tensors replaced by storage-free ``meta`` tensors of the same shape and dtype."""
    if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
        return torch.empty(tuple(int(n) for n in value.shape), dtype=value.dtype, device="meta")
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return tuple(_shape_only(v) for v in value)
    if isinstance(value, (list, tuple)):
        return type(value)(_shape_only(v) for v in value)
    if isinstance(value, dict):
        return {k: _shape_only(v) for k, v in value.items()}
    return value


class _Recorder(fx.Interpreter):
    """Runs the graph, keeping only the shapes of intermediate tensors (memory stays flat)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.shapes: dict[fx.Node, Any] = {}

    def run_node(self, node: fx.Node) -> Any:
        result = super().run_node(node)
        self.shapes[node] = result if node.op == "get_attr" else _shape_only(result)
        return result


def record_values(gm: fx.GraphModule, args: tuple, kwargs: dict) -> dict[fx.Node, Any]:
    """Every node's value on the dummy input (one forward pass, no grad); intermediate tensors
    are kept as storage-free ``meta`` tensors of the same shape, so memory stays flat.

    (Running on the ``meta`` device instead was tried: its first use in a process costs
    seconds of lazy initialisation, more than a real forward pass of a ResNet-50.)
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    flat = list(args) + [kwargs[n.target] for n in placeholders[len(args):] if n.target in kwargs]
    recorder = _Recorder(gm)
    with torch.no_grad():
        recorder.run(*flat)
    return recorder.shapes


def module_path(node: fx.Node) -> str:
    """The qualified name of the module whose forward contains ``node`` ('' for the model)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        last = list(stack.values())[-1]
        return last[0] if isinstance(last, tuple) else str(last)
    return ""
