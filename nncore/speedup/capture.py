"""Graph capture: the data flow of one forward pass, as a ``torch.fx.Graph`` with a value per node.

Two front ends give the analysis the same kind of graph, whose ``call_module`` nodes are the modules
that have a shrink rule (their ``forward`` is not looked into):

1. **torch.fx symbolic tracing**, when it traces the whole model. The graph is general (it holds
   for every input, not just the dummy one), so when a model's code carries literal sizes that the
   shrink changes (``x.view(-1, 16 * 5 * 5)``), the rewritten graph can become the model's forward.
2. **A dispatch-level recording** of one eager forward pass on the dummy input, for everything fx
   cannot trace: a ``TorchFunctionMode`` sees every torch function, tensor method and operator the
   Python code runs (``x[..., :n] = y``, ``scaled_dot_product_attention``, rotary embeddings), and
   forward hooks turn each module that has a rule into one node. Data-dependent control flow is
   simply executed. The graph is specific to the dummy input, so the model keeps its own ``forward``
   and the shrink updates the attributes that code reads (head counts, see ``heads.py``).

Evidence for the choice (Hugging Face transformers 5.24, torch 2.13): fx fails on ``BertModel``
("'Proxy' object does not support item assignment"), ``GPT2Model`` and ``LlamaModel`` ("co_varnames
is too small"), and transformers 5.x no longer ships an fx tracer. ``torch.export`` traces them but
decomposes modules into ATen ops, needs seconds per model where one recorded forward needs
milliseconds, and still refuses data-dependent code. An autograd-graph walk (Torch-Pruning's
``grad_fn`` chain) sees no shape arguments, no integer indexing and nothing run under ``no_grad``.
The recording sees all of these at the cost of one forward pass, and fx keeps the CNN path (with
its literal-size rewriting) exactly as it was.

Both front ends run their forward pass dry (:mod:`~nncore.speedup.dryrun`): the analysis needs
shapes, so the products of linear, convolution and attention ops are skipped, and a model whose code
reads values they would have set is recorded for real.

What the recording cannot see is kept safe: an op the analysis does not understand is a barrier
that keeps the channels flowing into and out of it, and a tensor of unknown origin is a constant.
``strict=True`` in :class:`~nncore.speedup.ModelSpeedup` refuses a model with such barriers.
Modules with parameters that the dummy forward never ran (auxiliary heads used only in training)
are captured by a second recording in training mode (normalization and dropout layers kept in
evaluation mode, so no statistics change), and both graphs feed one analysis.
"""
from __future__ import annotations

import contextlib
import operator
from typing import Any, Callable

import attrs
import torch
import torch.fx as fx
from torch import nn
from torch.overrides import TorchFunctionMode

from nncore.speedup.dryrun import DryRun
from nncore.speedup.graph import record_values, shape_only, trace_fx
from nncore.speedup.tensors import flat_tensors

IsLeaf = Callable[[nn.Module], bool]

# Python operators: torch function name -> (operator, swap operands)
_DUNDERS = {
    "__add__": (operator.add, False), "__radd__": (operator.add, True), "__iadd__": (operator.add, False),
    "__sub__": (operator.sub, False), "__isub__": (operator.sub, False), "__rsub__": ("rsub", False),
    "__mul__": (operator.mul, False), "__rmul__": (operator.mul, True), "__imul__": (operator.mul, False),
    "__truediv__": (operator.truediv, False), "__itruediv__": (operator.truediv, False),
    "__floordiv__": (operator.floordiv, False), "__matmul__": (operator.matmul, False),
    "__rmatmul__": (operator.matmul, True), "__neg__": (operator.neg, False), "__pow__": ("pow", False),
    "__getitem__": (operator.getitem, False), "__setitem__": (operator.setitem, False),
}
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.modules.dropout._DropoutNd)


@attrs.define
class Capture:
    """Captured graphs of one model.

    :ivar graphs: the graphs (the second one, if any, records training-only branches)
    :ivar values: every node's value on the dummy input (intermediate tensors as ``meta`` tensors)
    :ivar model: the captured model; node targets name its submodules and parameters
    :ivar method: ``"fx"`` or ``"dispatch"`` (the front end of the first graph)
    :ivar graph_module: the fx ``GraphModule`` (fx only): it can replace the model's forward
    :ivar output: the model's output on the dummy input (real tensors)
    :ivar unvisited: modules with parameters that no captured forward ran
    :ivar training_error: why the training-mode recording failed on the dummy input (if it did)
    """

    graphs: list
    values: dict
    model: nn.Module
    method: str
    output: Any = None
    graph_module: fx.GraphModule | None = None
    unvisited: tuple = ()
    training_error: str | None = None

    def nodes(self):
        """Every node of every graph, in order."""
        for graph in self.graphs:
            yield from graph.nodes

    def get_submodule(self, name: str) -> nn.Module:
        """``model.get_submodule(name)``, walking the module dictionaries directly (called per node
        and pass; ``nn.Module.get_submodule`` goes through ``__getattr__`` at every level)."""
        module = self.model
        try:
            for part in name.split(".") if name else ():
                module = module._modules[part]
        except KeyError:
            return self.model.get_submodule(name)  # raises its own error
        return module


def capture(model: nn.Module, args: tuple, kwargs: dict, is_leaf: IsLeaf,
            leaf_types: tuple[type, ...], real_output: bool = False) -> Capture:
    """Capture ``model`` (in its current mode) on ``args``/``kwargs``; see the module docstring.

    The forward pass is a dry run (products skipped, :mod:`~nncore.speedup.dryrun`) unless
    ``real_output`` asks for the model's real output in :attr:`Capture.output`.
    """
    try:
        gm = trace_fx(model, leaf_types, is_leaf)
    except Exception:
        gm = None
    if gm is not None:
        values, output = record_values(gm, args, kwargs, dry=not real_output)
        result = Capture([gm.graph], values, model, "fx", output, gm)
        visited = _fx_visited(gm)
    else:
        recorder = _record(model, is_leaf, args, kwargs, dry=not real_output)
        result = Capture([recorder.graph], recorder.values, model, "dispatch", recorder.output)
        visited = recorder.visited
    unvisited = _unvisited(model, visited)
    if unvisited:
        try:
            with _training_branches(model):
                recorder = _record(model, is_leaf, args, kwargs, dry=True)
        except Exception as exc:  # noqa: BLE001 - the model's own training-mode code failed on dummy_input
            result.training_error = f"{type(exc).__name__}: {exc}"
        else:
            result.graphs.append(recorder.graph)
            result.values.update(recorder.values)
            unvisited = _unvisited(model, visited | recorder.visited)
    result.unvisited = tuple(unvisited)
    return result


def _record(model: nn.Module, is_leaf: IsLeaf, args: tuple, kwargs: dict, dry: bool) -> "_Recorder":
    """One recorded forward pass: a dry run if asked and possible, otherwise a real one."""
    if dry:
        recorder = _Recorder(model, is_leaf)
        try:
            recorder.record(args, kwargs, DryRun())
        except Exception:  # noqa: BLE001 - the code reads skipped values or fails on them: record for real
            pass
        else:
            return recorder
    recorder = _Recorder(model, is_leaf)
    recorder.record(args, kwargs)
    return recorder


def _fx_visited(gm: fx.GraphModule) -> set[str]:
    """Modules the graph runs or reads from (a unit's own submodules included)."""
    names = set()
    for node in gm.graph.nodes:
        if node.op in ("call_module", "get_attr"):
            parts = str(node.target).split(".")
            names.update(".".join(parts[:i]) for i in range(len(parts) + 1))
        if node.op == "call_module":
            names.update(name for name, _ in gm.get_submodule(str(node.target)).named_modules(prefix=str(node.target)))
    return names


def _unvisited(model: nn.Module, visited: set[str]) -> list[str]:
    """Top-most modules owning parameters, none of which any capture touched."""
    found = []
    for name, module in model.named_modules():
        if not name or name in visited or any(name.startswith(prefix + ".") for prefix in found):
            continue
        if next(module.parameters(), None) is not None and not any(
                other == name or other.startswith(name + ".") for other in visited):
            found.append(name)
    return found


@contextlib.contextmanager
def _training_branches(model: nn.Module):
    """Training mode for control flow, evaluation mode for normalization and dropout layers."""
    modes = {module: module.training for module in model.modules()}
    try:
        for module in model.modules():
            module.training = not isinstance(module, _NORM_TYPES)
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode


class _Recorder(TorchFunctionMode):
    """Records one eager forward pass as an fx graph (see the module docstring)."""

    def __init__(self, model: nn.Module, is_leaf: IsLeaf) -> None:
        super().__init__()
        self.model = model
        self.is_leaf = is_leaf
        self.graph = fx.Graph()
        self.values: dict[fx.Node, Any] = {}
        self.node_of: dict[int, fx.Node] = {}
        self.alive: list[torch.Tensor] = []  # keeps ids unique while recording
        self.attr_name: dict[int, str] = {}
        for name, tensor in list(model.named_parameters(remove_duplicate=False)) + \
                list(model.named_buffers(remove_duplicate=False)):
            self.attr_name.setdefault(id(tensor), name)
        self.attr_nodes: dict[str, fx.Node] = {}
        self.constants = 0
        self.leaf_depth = 0
        self.stack: list[str] = []
        self.visited: set[str] = {""}
        self.output: Any = None
        self.owner_types: dict[str, type] = {}

    # -- driving -------------------------------------------------------------------------------
    def record(self, args: tuple, kwargs: dict, mode: TorchFunctionMode | None = None) -> None:
        """Run the model once, recording it (inside ``mode`` too, if given)."""
        handles = []
        for name, module in self.model.named_modules():
            handles.append(module.register_forward_pre_hook(self._pre_hook(name, module), with_kwargs=True))
            handles.append(module.register_forward_hook(self._post_hook(name, module), with_kwargs=True))
        try:
            args = tuple(self._inputs(f"input_{i}", a) for i, a in enumerate(args))
            kwargs = {key: self._inputs(key, value) for key, value in kwargs.items()}
            with torch.no_grad(), mode or contextlib.nullcontext(), self:
                self.output = self.model(*args, **kwargs)
            self.graph.output(self._arg(self.output))
        finally:
            for handle in handles:
                handle.remove()
            self.alive.clear()
            self.node_of.clear()

    def _inputs(self, name: str, value: Any) -> Any:
        for k, tensor in enumerate(flat_tensors(value)):
            node = self.graph.placeholder(name if k == 0 else f"{name}_{k}")
            self._bind(tensor, node)
            self.values[node] = shape_only(tensor)
        return value

    # -- module hooks --------------------------------------------------------------------------
    def _pre_hook(self, name: str, module: nn.Module):
        def hook(_module, args, kwargs):
            self.visited.add(name)
            self.stack.append(name)
            if self.leaf_depth or (name and self.is_leaf(module)):
                if not self.leaf_depth:  # a unit: its own submodules count as run
                    self.visited.update(inner for inner, _ in module.named_modules(prefix=name))
                self.leaf_depth += 1
        return hook

    def _post_hook(self, name: str, module: nn.Module):
        def hook(_module, args, kwargs, output):
            self.stack.pop()
            if not self.leaf_depth:
                return None
            self.leaf_depth -= 1
            if self.leaf_depth == 0:
                with torch._C.DisableTorchFunction():
                    node = self.graph.call_module(name, self._arg(args), self._arg(kwargs))
                    self._set_meta(node, name, module)
                    self._bind_output(node, output)
            return None
        return hook

    # -- recording -----------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if self.leaf_depth:
            return result
        with torch._C.DisableTorchFunction():
            self._record(func, args, kwargs, result)
        return result

    def _record(self, func, args, kwargs, result) -> None:
        name = getattr(func, "__name__", "")
        inplace = False
        if name == "__get__":  # a tensor property (x.T, x.mT, x.data); sizes and dtypes are constants
            if not isinstance(result, torch.Tensor):
                return
            op, target = "call_method", getattr(getattr(func, "__self__", None), "__name__", "property")
        elif name in _DUNDERS:
            target, swap = _DUNDERS[name]
            op = "call_function" if callable(target) else "call_method"
            inplace = name.startswith("__i") or name == "__setitem__"
            if swap:
                args = (args[1], args[0]) + tuple(args[2:])
        elif _is_method(func):
            op, target = "call_method", name
            if name.endswith("_") and not name.endswith("__"):
                target, inplace = name[:-1], True
        else:
            op, target = "call_function", func
        if "out" in kwargs and isinstance(kwargs.get("out"), torch.Tensor):
            inplace = True
        if not inplace and not flat_tensors(result):
            return
        node = self.graph.create_node(op, target, self._arg(tuple(args)), self._arg(kwargs))
        self._set_meta(node, self.stack[-1] if self.stack else "", None)
        if inplace:
            changed = kwargs["out"] if isinstance(kwargs.get("out"), torch.Tensor) else args[0]
            self._bind(changed, node)
            self.values[node] = shape_only(changed)
        else:
            self._bind_output(node, result)

    def _bind_output(self, node: fx.Node, output: Any) -> None:
        self.values[node] = shape_only(output)
        if isinstance(output, torch.Tensor):
            self._bind(output, node)
        elif isinstance(output, (list, tuple)):
            for i, item in enumerate(output):
                if flat_tensors(item):
                    getter = self.graph.call_function(operator.getitem, (node, i))
                    getter.meta.update(node.meta)
                    self._bind_output(getter, item)

    def _bind(self, tensor: torch.Tensor, node: fx.Node) -> None:
        self.node_of[id(tensor)] = node
        self.alive.append(tensor)

    def _set_meta(self, node: fx.Node, path: str, module: nn.Module | None) -> None:
        owner_type = self.owner_types.get(path) if module is None else type(module)
        if owner_type is None:
            owner_type = self.owner_types[path] = type(self.model.get_submodule(path) if path else self.model)
        node.meta["nn_module_stack"] = {path: (path, owner_type)}

    def _arg(self, value: Any) -> Any:
        """A call's argument with every tensor replaced by its node."""
        if isinstance(value, torch.Tensor):
            node = self.node_of.get(id(value))
            if node is not None:
                return node
            return self._source(value)
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            return tuple(self._arg(v) for v in value)
        if isinstance(value, (list, tuple)):
            return type(value)(self._arg(v) for v in value)
        if isinstance(value, dict):
            return {k: self._arg(v) for k, v in value.items()}
        if isinstance(value, slice):
            return slice(self._arg(value.start), self._arg(value.stop), self._arg(value.step))
        if isinstance(value, (int, float, bool, str, type(None), torch.dtype, torch.device, torch.memory_format,
                              torch.layout, type(Ellipsis))):
            return value
        return None  # objects the analysis never needs (caches, configs)

    def _source(self, tensor: torch.Tensor) -> fx.Node:
        """A parameter or buffer of the model (``get_attr``), or a constant of unknown origin."""
        name = self.attr_name.get(id(tensor))
        if name is not None:
            node = self.attr_nodes.get(name)
            if node is None:
                node = self.attr_nodes[name] = self.graph.get_attr(name)
                self.values[node] = tensor
            return node
        self.constants += 1
        node = self.graph.placeholder(f"constant_{self.constants}")
        self.values[node] = shape_only(tensor)
        self._bind(tensor, node)
        return node


def _is_method(func: Any) -> bool:
    qualname = getattr(func, "__qualname__", "")
    return qualname.split(".")[0] in ("Tensor", "TensorBase", "_TensorBase")
