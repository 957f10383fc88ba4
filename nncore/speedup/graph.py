"""torch.fx symbolic tracing and the values of one real forward pass through the traced graph
(the first front end of :mod:`nncore.speedup.capture`)."""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from nncore.speedup.dryrun import DryRun


class _Tracer(fx.Tracer):
    def __init__(self, leaf_types: tuple[type, ...], is_leaf) -> None:
        super().__init__()
        self.leaf_types = leaf_types
        self.is_leaf = is_leaf

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if self.is_leaf(module):
            return True
        if isinstance(module, self.leaf_types):  # a subclass the rule does not describe: look into it
            return False
        return super().is_leaf_module(module, qualified_name)


def trace_fx(model: nn.Module, leaf_types: tuple[type, ...], is_leaf) -> fx.GraphModule:
    """Trace the whole of ``model`` symbolically; raises whatever fx raises when it cannot."""
    graph = _Tracer(leaf_types, is_leaf).trace(model)
    return fx.GraphModule(model, graph)


def shape_only(value: Any) -> Any:
    """Tensors replaced by storage-free ``meta`` tensors of the same shape and dtype."""
    if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
        return torch.empty(tuple(int(n) for n in value.shape), dtype=value.dtype, device="meta")
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return tuple(shape_only(v) for v in value)
    if isinstance(value, (list, tuple)):
        return type(value)(shape_only(v) for v in value)
    if isinstance(value, dict):
        return {k: shape_only(v) for k, v in value.items()}
    return value


class _Recorder(fx.Interpreter):
    """Runs the graph, keeping only the shapes of intermediate tensors (memory stays flat)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.shapes: dict[fx.Node, Any] = {}

    def run_node(self, node: fx.Node) -> Any:
        result = super().run_node(node)
        self.shapes[node] = result if node.op == "get_attr" else shape_only(result)
        return result


def record_values(gm: fx.GraphModule, args: tuple, kwargs: dict,
                  dry: bool = False) -> tuple[dict[fx.Node, Any], Any]:
    """Every node's value on the dummy input (one forward pass, no grad), and the output;
    intermediate tensors are kept as storage-free ``meta`` tensors of the same shape, so memory stays flat.
    ``dry``: skip the products (:mod:`~nncore.speedup.dryrun`) where the graph allows it; the output
    is then not the model's.

    (Running on the ``meta`` device instead was tried: its first use in a process costs
    seconds of lazy initialisation, more than a real forward pass of a ResNet-50.)
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    flat = list(args) + [kwargs[n.target] for n in placeholders[len(args):] if n.target in kwargs]
    if dry:
        recorder = _Recorder(gm)
        try:
            with torch.no_grad(), DryRun():
                output = recorder.run(*flat)
            return recorder.shapes, output
        except Exception:  # noqa: BLE001 - a value read, or a failure on zeros: record for real
            pass
    recorder = _Recorder(gm)
    with torch.no_grad():
        output = recorder.run(*flat)
    return recorder.shapes, output


def module_path(node: fx.Node) -> str:
    """The qualified name of the module whose forward contains ``node`` ('' for the model)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        last = list(stack.values())[-1]
        return last[0] if isinstance(last, tuple) else str(last)
    return ""


_OPERATORS = {
    operator.add: "add", operator.iadd: "add", operator.sub: "sub", operator.isub: "sub",
    operator.mul: "mul", operator.imul: "mul", operator.truediv: "div", operator.itruediv: "div",
    operator.floordiv: "div", operator.matmul: "matmul", operator.neg: "neg",
    operator.getitem: "getitem", operator.setitem: "setitem", getattr: "getattr",
}


def op_name(node: fx.Node) -> str:
    """A normalised name for the function or method a node calls."""
    if node.op == "call_method":
        return str(node.target)
    if node.target in _OPERATORS:
        return _OPERATORS[node.target]
    return getattr(node.target, "__name__", str(node.target))
