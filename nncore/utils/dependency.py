"""Channel and group dependencies between layers (NNI's ``shape_dependency`` utilities).

Two views of the same model:

* NNI's, for :class:`ChannelDependency` and :class:`GroupDependency` as NNI 1.9 defines them: the
  layers whose outputs meet in an addition (or a concatenation along a dimension other than the
  channels) form a dependency set; a grouped or depthwise convolution asks its own filters and
  those of the convolutions feeding it to be divisible into its group count. Found by walking the
  autograd graph of one forward pass back from each addition, concatenation and grouped
  convolution to the nearest layers, as NNI walks its traced graph (works on any model that runs).
* nncore's, for dependency-aware pruning and :func:`nncore.utils.fix_mask_conflict`: the speedup's
  channel analysis (:class:`nncore.speedup.analysis.Analysis`), which also couples the channels
  tied one to one by a depthwise convolution or an element-wise product, so that everything a
  coupled set prunes can really be removed. ``ChannelDependency(..., depthwise=True)`` gives these
  sets.

Both ``export`` methods write NNI's CSV layout, atomically.
"""
from __future__ import annotations

import csv
import io
import math
from collections import deque
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from nncore.artifacts import PathLike, atomic_write
from nncore.errors import ConfigError
from nncore.speedup.analysis import Analysis, coupled_sets, split_inputs
from nncore.utils.layers import is_prunable_layer

_ADD_NODES = ("AddBackward0",)
_CAT_NODES = ("CatBackward0",)
_HEADER = "invalid argument"


def _check_arguments(owner: str, model: Any, dummy_input: Any, traced: Any, traced_name: str) -> None:
    if traced is not None:
        raise ConfigError(f"{owner}: {traced_name} (a torch.jit trace) is not used by nncore, which traces the model "
                          "itself; pass model and dummy_input instead", header=_HEADER)
    if not isinstance(model, nn.Module) or dummy_input is None:
        raise ConfigError(f"{owner} needs model (a torch.nn.Module) and dummy_input (an input of the model)",
                          header=_HEADER)


class ForwardGraph:
    """One forward pass of ``model`` on ``dummy_input``, with autograd's graph kept.

    :ivar layers: the prunable layers that ran (convolutions, ``Linear``, HF ``Conv1D``), in model order
    :ivar producer: autograd node of each layer call's output -> the layer's name
    :ivar nodes: every autograd node reachable from the outputs
    """

    def __init__(self, model: nn.Module, dummy_input: Any) -> None:
        args, kwargs = split_inputs(dummy_input)
        modules = {name: module for name, module in model.named_modules() if is_prunable_layer(module)}
        self.producer: dict[Any, str] = {}
        handles = [module.register_forward_hook(self._recorder(name)) for name, module in modules.items()]
        flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
        was_training = model.training
        model.eval()
        try:
            for parameter, _ in flags:
                parameter.requires_grad_(True)
            with torch.enable_grad():
                outputs = model(*args, **kwargs)
        finally:
            for parameter, flag in flags:
                parameter.requires_grad_(flag)
            for handle in handles:
                handle.remove()
            model.train(was_training)
        self.nodes = _reachable(_output_nodes(outputs))
        called = set(self.producer.values())
        self.layers = [name for name in modules if name in called]
        self.modules = modules

    def _recorder(self, name: str):
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.grad_fn is not None:
                self.producer[output.grad_fn] = name
        return record

    def parents(self, node: Any, kinds: tuple[type, ...] | None = None) -> list[str]:
        """The nearest layers upstream of ``node``'s inputs (of ``kinds`` only, when given:
        other layers are walked through)."""
        found: list[str] = []
        queue = deque(next_node for next_node, _ in node.next_functions if next_node is not None)
        seen = set()
        while queue:
            current = queue.popleft()
            if current in seen:
                continue
            seen.add(current)
            name = self.producer.get(current)
            if name is not None and (kinds is None or isinstance(self.modules[name], kinds)):
                if name not in found:
                    found.append(name)
                continue
            queue.extend(next_node for next_node, _ in current.next_functions if next_node is not None)
        return found

    def op_nodes(self, names: tuple[str, ...]) -> list[Any]:
        """The autograd nodes of the given kinds (``AddBackward0``, ...)."""
        return [node for node in self.nodes if type(node).__name__ in names]


def _output_nodes(value: Any) -> list[Any]:
    if isinstance(value, torch.Tensor):
        return [value.grad_fn] if value.grad_fn is not None else []
    if isinstance(value, dict):
        return [node for item in value.values() for node in _output_nodes(item)]
    if isinstance(value, (list, tuple)):
        return [node for item in value for node in _output_nodes(item)]
    return []


def _reachable(roots: Iterable[Any]) -> list[Any]:
    seen: dict[Any, None] = {}
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen[node] = None
        stack.extend(next_node for next_node, _ in node.next_functions if next_node is not None)
    return list(seen)


def _cat_dim(node: Any) -> int:
    dim = int(getattr(node, "_saved_dim", 1))
    return dim - 2**64 if dim >= 2**63 else dim


def _merge(groups: Iterable[list[str]], names: Iterable[str]) -> list[set[str]]:
    """Union the names of each group; every name ends in exactly one set (model order)."""
    parent = {name: name for name in names}

    def find(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for group in groups:
        for other in group[1:]:
            parent[find(other)] = find(group[0])
    sets: dict[str, set[str]] = {}
    for name in parent:
        sets.setdefault(find(name), set()).add(name)
    return list(sets.values())


def _write_csv(filepath: PathLike, rows: list[list[Any]]) -> None:
    text = io.StringIO()
    csv.writer(text, delimiter=",").writerows(rows)
    data = text.getvalue().encode()
    atomic_write(filepath, lambda handle: handle.write(data))


class ChannelDependency:
    """NNI's ``ChannelDependency``: the layers whose output channels must be pruned alike.

    :param model: the model to analyse (not modified; run once in eval mode).
    :param dummy_input: an input the model accepts (tensor, tuple of inputs, dict of keyword inputs).
    :param traced_model: NNI's torch.jit trace; not used by nncore (an error says so).
    :param depthwise: also couple the layers whose channels a depthwise convolution or an element-wise
        product ties one to one (the speedup's analysis; what dependency-aware pruners use).
    :ivar dependency_sets: list of sets of layer names (convolutions, ``Linear``, HF ``Conv1D``, as in
        ``named_modules``); by default, as in NNI, the layers whose outputs are added together or
        concatenated along a dimension other than the channels. A layer without coupling is alone.
    :ivar dependency: dict layer name -> its set.
    """

    def __init__(self, model: nn.Module | None = None, dummy_input: Any = None, traced_model: Any = None, *,
                 depthwise: bool = False) -> None:
        _check_arguments("ChannelDependency", model, dummy_input, traced_model, "traced_model")
        self.model = model
        if depthwise:
            self.dependency_sets: list[set[str]] = coupled_sets(Analysis(model, dummy_input))
        else:
            graph = ForwardGraph(model, dummy_input)
            groups = [graph.parents(node) for node in graph.op_nodes(_ADD_NODES)]
            groups += [graph.parents(node) for node in graph.op_nodes(_CAT_NODES) if _cat_dim(node) != 1]
            self.dependency_sets = _merge(groups, graph.layers)
        self.dependency = {name: group for group in self.dependency_sets for name in group}

    def export(self, filepath: PathLike) -> None:
        """Write the sets as NNI's CSV: a ``Dependency Set,Layers`` header, then one row per set,
        ``Set 1,layer1.1.conv2,layer1.0.conv2,conv1`` (written atomically)."""
        rows: list[list[Any]] = [["Dependency Set", "Layers"]]
        rows += [[f"Set {index}", *sorted(group)] for index, group in enumerate(self.dependency_sets, start=1)]
        _write_csv(filepath, rows)


class GroupDependency:
    """NNI's ``GroupDependency``: for each convolution, the count of groups its filters must split into.

    ``dependency[name] = g``: prune the filters of ``name`` evenly in ``g`` groups, because ``name``
    is a grouped (or depthwise) convolution with ``g`` groups or feeds one (through any ops but
    other convolutions). When several constraints meet, ``g`` is their least common multiple
    (NNI takes the largest). Convolutions without constraint map to 1.

    :param model: the model to analyse (not modified; run once in eval mode).
    :param dummy_input: an input the model accepts.
    :param traced_model: NNI's torch.jit trace; not used by nncore (an error says so).
    :ivar dependency: dict convolution name -> group count.
    :ivar dependency_sets: the same dict (NNI's name for it).
    """

    def __init__(self, model: nn.Module | None = None, dummy_input: Any = None, traced_model: Any = None) -> None:
        _check_arguments("GroupDependency", model, dummy_input, traced_model, "traced_model")
        self.model = model
        graph = ForwardGraph(model, dummy_input)
        convs = [name for name in graph.layers if isinstance(graph.modules[name], nn.modules.conv._ConvNd)]
        self.dependency: dict[str, int] = {name: graph.modules[name].groups for name in convs}
        for node, name in graph.producer.items():
            groups = getattr(graph.modules[name], "groups", 1)
            if groups > 1:
                for parent in graph.parents(node, (nn.modules.conv._ConvNd,)):
                    self.dependency[parent] = math.lcm(self.dependency[parent], groups)

    @property
    def dependency_sets(self) -> dict[str, int]:
        return self.dependency

    def export(self, filepath: PathLike) -> None:
        """Write NNI's CSV: a ``Conv Layer Name,Group`` header, then ``conv1,1`` per convolution
        (written atomically)."""
        _write_csv(filepath, [["Conv Layer Name", "Group"]] + [[name, g] for name, g in self.dependency.items()])


def concatenated_sets(model: nn.Module, dummy_input: Any) -> list[set[str]]:
    """Sets of layers whose outputs meet in one concatenation (any dimension), NNI's
    ``CatPaddingDependency``; layers in no concatenation are left out."""
    graph = ForwardGraph(model, dummy_input)
    groups = [graph.parents(node) for node in graph.op_nodes(_CAT_NODES)]
    return [group for group in _merge(groups, graph.layers) if len(group) > 1]


def grouped_counts(analysis: Analysis) -> dict[str, int]:
    """For dependency-aware pruning with depthwise coupling: per layer, the group count of the
    grouped (not depthwise) convolutions it is or feeds, from the speedup's analysis (depthwise
    convolutions share their input's channel mask instead)."""
    layers = analysis.layer_slots("out")
    counts: dict[str, int] = {name: 1 for name in layers}
    roots = analysis.decision.roots
    for constraint in analysis.ctx.classes.constraints:
        groups = constraint.groups
        counts[constraint.name] = math.lcm(counts.get(constraint.name, 1), groups)
        feeding = set(np.unique(roots[constraint.in_slots]).tolist()) - {0}
        for name, layer_roots in layers.items():
            if feeding & set(np.unique(layer_roots).tolist()):
                counts[name] = math.lcm(counts.get(name, 1), groups)
    return counts
