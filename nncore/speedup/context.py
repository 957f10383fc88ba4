"""The state of one analysis pass, handed to every op handler and shrinking rule."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx

from nncore.speedup.graph import module_path
from nncore.speedup.groups import ChannelClasses
from nncore.speedup.info import TInfo, no_zero, pinned_info


class Context:
    """State of one analysis pass, handed to every op handler and shrinking rule."""

    def __init__(self, capture: Any, values: dict, masks: dict, choices: dict,
                 extra_rules: dict | None = None, cache: dict | None = None) -> None:
        self.capture = capture
        self.cache = {} if cache is None else cache
        self.extra_rules = extra_rules or {}
        self.values = values
        self.masks = masks
        self.choices = choices
        self.classes = ChannelClasses()
        self.infos: dict[fx.Node, Any] = {}
        self.records: dict[tuple[str, str], np.ndarray] = {}
        self.splits: dict[tuple[fx.Node, int], int] = {}
        self.preferred: dict[fx.Node, int] = self.cache.get("preferred", {})  # view -> dim carrying attention heads
        self.unknown: list[tuple[str, str]] = []
        self.filter_zero: dict[str, np.ndarray] = {}
        self.functional_norms: dict[str, np.ndarray] = {}  # module calling F.layer_norm -> channel slots
        self.consts: dict[fx.Node, Any] = {}  # per tensor: constants of its slabs (see constants.py)
        self.folds: dict[str, np.ndarray] = {}  # reader module -> the constants it reads (see fold.py)

    # -- helpers for handlers and rules ------------------------------------------------------
    def choose(self, node: fx.Node, key: int, count: int, default: int) -> int:
        """Which of ``count`` dimensions carries the channel classes at a split (see shapes)."""
        self.splits[(node, key)] = count
        return self.choices.get((node, key), default)

    def record(self, owner: str, key: str, slots: np.ndarray) -> None:
        """Remember the slots of a sliceable axis (``owner`` module/attribute, ``key`` axis).

        A module run twice (or seen by two captured graphs) slices one axis: its slots are merged."""
        old = self.records.get((owner, key))
        if old is not None and len(old) == len(slots):
            self.classes.union_vectors(old, slots)
            return
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
            module = self.capture.get_submodule(str(node.target))
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

    def pin_all(self, infos: Any, reason: str, soft: bool = False) -> None:
        """Keep every channel of these tensors (recursing into containers); see ``ChannelClasses.pin``."""
        if isinstance(infos, TInfo):
            for slots, zero in zip(infos.slots, infos.zero):
                self.classes.pin(slots, reason, zero, soft)
        elif isinstance(infos, (list, tuple)):
            for item in infos:
                self.pin_all(item, reason, soft)
        elif isinstance(infos, dict):
            for item in infos.values():
                self.pin_all(item, reason, soft)

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
