"""One linear pass over the traced graph: the classes and zeros of every tensor."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx

from nncore.errors import SpeedupError
from nncore.speedup.graph import module_path
from nncore.speedup.groups import ChannelClasses
from nncore.speedup.info import TInfo, no_zero, pinned_info


class Context:
    """State of one analysis pass, handed to every op handler and shrinking rule."""

    def __init__(self, gm: fx.GraphModule, values: dict, masks: dict, choices: dict,
                 extra_rules: dict | None = None, cache: dict | None = None) -> None:
        self.gm = gm
        self.cache = {} if cache is None else cache
        self.extra_rules = extra_rules or {}
        self.values = values
        self.masks = masks
        self.choices = choices
        self.classes = ChannelClasses()
        self.infos: dict[fx.Node, Any] = {}
        self.records: dict[tuple[str, str], np.ndarray] = {}
        self.splits: dict[tuple[str, int], int] = {}
        self.unknown: list[tuple[str, str]] = []
        self.filter_zero: dict[str, np.ndarray] = {}
        self.consts: dict[fx.Node, Any] = {}  # per tensor: constants of its slabs (see constants.py)
        self.folds: dict[str, Any] = {}  # reader module -> constants it folds into its bias (see fold.py)

    # -- helpers for handlers and rules ------------------------------------------------------
    def choose(self, node: fx.Node, key: int, count: int, default: int) -> int:
        """Which of ``count`` dimensions carries the channel classes at a split (see shapes)."""
        self.splits[(node.name, key)] = count
        return self.choices.get((node.name, key), default)

    def record(self, owner: str, key: str, slots: np.ndarray) -> None:
        """Remember the slots of a sliceable axis (``owner`` module/attribute, ``key`` axis)."""
        self.records[(owner, key)] = slots

    def is_masked(self, name: str) -> bool:
        """Zeros of this module's parameters count (it has an entry in the masks)."""
        return name in self.masks

    def weight_mask(self, name: str) -> torch.Tensor | None:
        """The weight mask of module ``name`` (``None`` when it has none)."""
        entry = self.masks.get(name)
        return None if entry is None else entry.get("weight")

    def op_label(self, node: fx.Node) -> str:
        where = module_path(node) or "<model>"
        if node.op == "call_module":
            module = self.gm.get_submodule(str(node.target))
            return f"{type(module).__name__} module {str(node.target)!r}"
        target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        kind = "method" if node.op == "call_method" else "function"
        return f"{kind} {target!r} in {where!r}"

    def info(self, arg: Any) -> Any:
        """The info of a node argument (recursing into lists and tuples); ``None`` if not a tensor."""
        if isinstance(arg, fx.Node):
            return self.infos.get(arg)
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.info(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self.info(v) for k, v in arg.items()}
        return None

    def value(self, arg: Any) -> Any:
        """The recorded real value of a node argument (recursing into containers)."""
        if isinstance(arg, fx.Node):
            return self.values.get(arg)
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.value(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self.value(v) for k, v in arg.items()}
        if isinstance(arg, slice):
            return slice(self.value(arg.start), self.value(arg.stop), self.value(arg.step))
        return arg

    def pin_all(self, infos: Any, reason: str) -> None:
        """Keep every channel of these tensors (recursing into containers)."""
        if isinstance(infos, TInfo):
            for slots, zero in zip(infos.slots, infos.zero):
                self.classes.pin(slots, reason, zero)
        elif isinstance(infos, (list, tuple)):
            for item in infos:
                self.pin_all(item, reason)
        elif isinstance(infos, dict):
            for item in infos.values():
                self.pin_all(item, reason)

    def barrier(self, node: fx.Node, value: Any, reason: str | None = None) -> Any:
        """An op the engine does not understand: inputs kept, output unremovable."""
        label = self.op_label(node)
        self.unknown.append((label, module_path(node)))
        self.pin_all([self.info(a) for a in node.args] + [self.info(v) for v in node.kwargs.values()],
                     reason or f"unknown op: {label}")
        return unknown_info(value)


def unknown_info(value: Any) -> Any:
    """The info of a value nothing is known about."""
    if isinstance(value, torch.Tensor):
        return pinned_info(value.shape)
    if isinstance(value, (list, tuple)):
        items = [unknown_info(v) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, dict):
        return {k: unknown_info(v) for k, v in value.items()}
    return None


def fresh_info(ctx: Context, value: torch.Tensor) -> TInfo:
    """Fresh, independent classes for every dimension of a tensor attribute."""
    return TInfo([ctx.classes.new(n) for n in value.shape], [no_zero(n) for n in value.shape])


def propagate(gm: fx.GraphModule, values: dict, masks: dict, choices: dict,
              extra_rules: dict | None = None, cache: dict | None = None) -> Context:
    """Run the analysis once with the given split choices."""
    from nncore.speedup.constants import track as track_constants
    from nncore.speedup.functions import call_function
    from nncore.speedup.rules import call_module

    ctx = Context(gm, values, masks, choices, extra_rules, cache)
    for node in gm.graph.nodes:
        value = values.get(node)
        if node.op == "placeholder":
            info = unknown_info(value)
        elif node.op == "get_attr":
            info = fresh_info(ctx, value) if isinstance(value, torch.Tensor) else None
            if info is not None:
                for d, slots in enumerate(info.slots):
                    ctx.record(f"attr:{node.target}", str(d), slots)
        elif node.op == "call_module":
            info = call_module(ctx, node, value)
        elif node.op in ("call_function", "call_method"):
            info = call_function(ctx, node, value)
        elif node.op == "output":
            ctx.pin_all(ctx.info(node.args[0]), "model output")
            info = None
        else:  # pragma: no cover - fx has no other node kinds
            raise SpeedupError(f"unexpected graph node kind {node.op!r}")
        if node.op != "output":
            info = track_constants(ctx, node, value, info)
        ctx.infos[node] = info
    return ctx
