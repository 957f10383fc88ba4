"""BatchNorm helpers shared by pruning and quantization: which BatchNorm directly consumes a
layer's output (one forward pass, or a ``torch.fx`` trace), and folding a BatchNorm into it
(:func:`fold_batchnorm`, re-exported from :mod:`nncore.wrapper`, whose quantizer wrapper folds)."""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn as nn

from nncore.wrapper import ModuleWrapper, batchnorm_factor, fold_batchnorm  # noqa: F401 - the arithmetic lives in the core

BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _traced_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules seen as single operations: wrappers and leaf modules (not a wrapper's inside)."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if any(name.startswith(wrapped + ".") for wrapped in found if isinstance(found[wrapped], ModuleWrapper)):
            continue
        if name and (isinstance(module, ModuleWrapper) or not any(True for _ in module.children())):
            found[name] = module
    return found


def direct_consumers(model: nn.Module, args: tuple, kwargs: dict) -> dict[str, set[str]]:
    """Which module directly consumes which module's output, from one forward pass.

    The pass runs in eval mode without gradients (no BatchNorm statistics change); forward
    hooks record each module's output tensor and which module receives it as an input.
    """
    from nncore.speedup.tensors import flat_tensors  # here: nncore.speedup imports this module

    produced: dict[int, tuple[str, torch.Tensor]] = {}
    consumers: dict[str, set[str]] = {}

    def before(name: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            for tensor in flat_tensors(inputs):
                producer = produced.get(id(tensor))
                if producer is not None and producer[1] is tensor:
                    consumers.setdefault(producer[0], set()).add(name)
        return hook

    def after(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            for tensor in flat_tensors(output):
                produced[id(tensor)] = (name, tensor)
        return hook

    handles = []
    for name, module in _traced_modules(model).items():
        handles.append(module.register_forward_pre_hook(before(name)))
        handles.append(module.register_forward_hook(after(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return consumers


def _symbolic_consumers(model: nn.Module) -> dict[str, set[str]] | None:
    """Like :func:`direct_consumers` from a ``torch.fx`` symbolic trace; ``None`` if it fails."""

    class WrapperAwareTracer(torch.fx.Tracer):
        def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
            return isinstance(module, ModuleWrapper) or super().is_leaf_module(module, qualified_name)

    try:
        graph = WrapperAwareTracer().trace(model)
    except Exception:  # noqa: BLE001 - models with data-dependent control flow cannot be traced
        return None
    consumers: dict[str, set[str]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            users = {user.target for user in node.users if user.op == "call_module"}
            consumers.setdefault(str(node.target), set()).update(str(user) for user in users)
    return consumers


def find_following_batchnorms(
    model: nn.Module, conv_names: Iterable[str], args: tuple | None = None, kwargs: dict | None = None
) -> dict[str, str] | None:
    """``{conv name: name of the BatchNorm that directly consumes its output}``.

    With ``args`` / ``kwargs`` (a model input) one forward pass is observed; without them the
    model is traced symbolically, and ``None`` is returned when that is impossible.
    """
    if args is None and kwargs is None:
        consumers = _symbolic_consumers(model)
        if consumers is None:
            return None
    else:
        consumers = direct_consumers(model, args or (), kwargs or {})
    modules = dict(model.named_modules())
    followers = {}
    for conv_name in conv_names:
        conv = modules[conv_name]
        channels = (conv.module if isinstance(conv, ModuleWrapper) else conv).weight.shape[0]
        for consumer in sorted(consumers.get(conv_name, ())):
            module = modules.get(consumer)
            module = module.module if isinstance(module, ModuleWrapper) else module
            if isinstance(module, BATCHNORM_TYPES) and module.num_features == channels and module.affine:
                followers[conv_name] = consumer
                break
    return followers
