"""An ONNX graph as the int8 rewriters see it: indexes, which module each node came from, and
the small edits they share (initializers, per-channel int8 weights, topological order)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx
import torch.nn as nn
from onnx import numpy_helper

from nncore.errors import ArtifactError

Range = tuple[float, float]


class OnnxGraph:
    """Indexes of an ONNX graph: producers, consumers, initializers (call :meth:`reindex` after edits)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self.reindex()

    def reindex(self) -> None:
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.outputs = {o.name for o in self.graph.output}
        self.producer = {out: node for node in self.graph.node for out in node.output}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in self.graph.node:
            for index, name in enumerate(node.input):
                self.consumers.setdefault(name, []).append((node, index))

    def only_consumer(self, tensor: str) -> onnx.NodeProto | None:
        uses = self.consumers.get(tensor, [])
        return uses[0][0] if len(uses) == 1 and tensor not in self.outputs else None

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer (``None`` for a computed tensor)."""
        return numpy_helper.to_array(self.initializers[name]) if name in self.initializers else None

    def add_initializer(self, name: str, array: np.ndarray) -> str:
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def drop_unused_initializers(self) -> None:
        used = {name for node in self.graph.node for name in node.input}
        for tensor in list(self.graph.initializer):
            if tensor.name not in used:
                self.graph.initializer.remove(tensor)

    def sorted_and_checked(self) -> onnx.ModelProto:
        """The model with its nodes in topological order, checked by ``onnx.checker``."""
        available = {i.name for i in self.graph.input} | set(self.initializers) | {""}
        pending, ordered = list(self.graph.node), []
        while pending:
            ready = [n for n in pending if all(i in available for i in n.input)]
            if not ready:
                raise ArtifactError("int8 export produced a graph with a cycle or a dangling input")
            for node in ready:
                ordered.append(node)
                available.update(node.output)
            pending = [n for n in pending if all(n is not r for r in ready)]
        del self.graph.node[:]
        self.graph.node.extend(ordered)
        onnx.checker.check_model(self.model)
        return self.model


def unqualified(name: str) -> str:
    """The scope segment the TorchScript exporter writes for module ``name``: from its last
    non-numeric atom on (``layers.0`` stays, ``blocks.0.act`` is ``act``)."""
    atoms = name.split(".")
    for index in reversed(range(len(atoms))):
        if not atoms[index].isnumeric():
            return ".".join(atoms[index:])
    return name


class Scopes:
    """Which module a node of a TorchScript-exported graph belongs to, from its name.

    The exporter names a node ``/<segment>/.../<op>``, one segment per module call on the stack:
    the module's :func:`unqualified` name, with ``_1``, ``_2`` ... appended when the same segment
    was already used under the same parent call (a module called again, or ``blocks.1.qkv`` after
    ``blocks.0.qkv`` in a ModuleList). :meth:`record` replays that naming on one eager forward,
    so every scope maps to exactly one module.
    """

    def __init__(self, modules: dict[str, str]):
        self.modules = modules

    @classmethod
    def record(cls, root: nn.Module, run: Callable[[], Any], prefix: str = "") -> Scopes:
        """Scopes of the calls ``run()`` makes into the modules of ``root`` (the exported module);
        ``prefix`` (e.g. ``'model'``) is stripped from the module names."""
        names = {id(module): name for name, module in root.named_modules()}
        stack: list[str] = []
        used: dict[tuple[str, str], int] = {}
        scopes: dict[str, str] = {}

        def enter(module: nn.Module, args: Any) -> None:
            name = names[id(module)]
            parent = stack[-1] if stack else ""
            if not name:  # the exported module itself writes no segment
                stack.append(parent)
                return
            segment = unqualified(name)
            count = used.get((parent, segment), 0)
            used[(parent, segment)] = count + 1
            scope = f"{parent}/{segment}" + (f"_{count}" if count else "")
            if name == prefix or name.startswith(f"{prefix}."):
                scopes[scope] = name[len(prefix) + 1:] if prefix else name
            stack.append(scope)

        def leave(module: nn.Module, args: Any, output: Any) -> None:
            stack.pop()

        handles = [h for m in root.modules() for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
        try:
            run()
        finally:
            for handle in handles:
                handle.remove()
        return cls(scopes)

    @staticmethod
    def scope(node: onnx.NodeProto) -> str:
        return node.name.rsplit("/", 1)[0] if node.name.startswith("/") else ""

    def module(self, scope: str) -> str | None:
        """The name of the module whose call is ``scope`` (``None`` if none)."""
        return self.modules.get(scope)

    def node_module(self, node: onnx.NodeProto) -> str | None:
        """The module a node belongs to; a node that ONNX Runtime made by fusing others is named
        ``<original node name>/<fusion>``, whose last scope segment is an op name."""
        scope = self.scope(node)
        found = self.module(scope)
        if found is None and "/" in scope.strip("/"):
            found = self.module(scope.rsplit("/", 1)[0])
        return found


def module_calls(g: OnnxGraph, scopes: Scopes, names: set[str]) -> dict[str, list[tuple[list[str], list[str]]]]:
    """``{module name: [(input tensors, output tensors) of each call]}`` for the modules in ``names``."""
    by_scope: dict[str, list[onnx.NodeProto]] = {}
    for node in g.graph.node:
        scope = scopes.scope(node)
        while scope:
            by_scope.setdefault(scope, []).append(node)
            scope = scope.rsplit("/", 1)[0]
    calls: dict[str, list[tuple[list[str], list[str]]]] = {}
    for scope, nodes in by_scope.items():
        module = scopes.module(scope)
        if module not in names:
            continue
        produced = {out for node in nodes for out in node.output}
        members = {id(node) for node in nodes}
        inputs = list(dict.fromkeys(
            name for node in nodes for name in node.input
            if name and name not in produced and name not in g.initializers))
        outputs = [out for out in dict.fromkeys(out for node in nodes for out in node.output)
                   if out in g.outputs or any(id(c) not in members for c, _ in g.consumers.get(out, []))]
        calls.setdefault(module, []).append((inputs, outputs))
    return calls


def weight_input_axis(node: onnx.NodeProto) -> int | None:
    """The axis of the output channels in the weight (second input) of a Conv/Gemm/MatMul node."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "MatMul":
        return 1
    if node.op_type == "Gemm":
        attributes = {a.name: a for a in node.attribute}
        if "transA" in attributes and attributes["transA"].i:
            return None
        return 0 if "transB" in attributes and attributes["transB"].i else 1
    return None


def symmetric_per_channel(weight: np.ndarray, axis: int, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """``(int8 weight, float32 scale per channel)``: ``weight ~ int8 * scale`` along ``axis``."""
    moved = np.moveaxis(weight.astype(np.float64), axis, 0)
    absmax = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
    scale = np.maximum(absmax / qmax, 1e-12)
    shape = [-1 if d == axis else 1 for d in range(weight.ndim)]
    integers = np.clip(np.round(weight / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return integers, scale.astype(np.float32)
