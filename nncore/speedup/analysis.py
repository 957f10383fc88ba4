"""The one topology analysis, shared by speedup and dependency-aware pruning."""
from __future__ import annotations

from typing import Any

import attrs
import numpy as np
from torch import nn

from nncore.speedup.attention import (AttentionGroup, find_cores, output_projection, preferred_splits, projection,
                                      split_view)
from nncore.speedup.capture import capture
from nncore.speedup.context import Context
from nncore.speedup.graph import module_path
from nncore.speedup.groups import Decision, decide
from nncore.speedup.propagate import propagate
from nncore.speedup.ruletable import builtin_leaf_types, extra_rules, find_rule

MAX_SPLIT_TRIALS = 64


def split_inputs(dummy_input: Any) -> tuple[tuple, dict]:
    """``dummy_input`` as positional and keyword arguments."""
    if isinstance(dummy_input, dict):
        return (), dict(dummy_input)
    if isinstance(dummy_input, (list, tuple)):
        return tuple(dummy_input), {}
    return (dummy_input,), {}


class Analysis:
    """Capture once, propagate channel classes, decide what goes.

    :ivar capture: the captured graph(s) of the model (:class:`~nncore.speedup.capture.Capture`)
    :ivar ctx: the analysis context of the chosen split layout
    :ivar decision: removed classes and the reasons others were kept
    """

    def __init__(self, model: nn.Module, dummy_input: Any, masks: dict | None = None,
                 real_output: bool = False) -> None:
        self.rules = extra_rules()
        args, kwargs = split_inputs(dummy_input)
        self.capture = capture(model, args, kwargs, lambda module: find_rule(module, self.rules) is not None,
                               tuple(self.rules) + builtin_leaf_types(), real_output)
        self.masks = dict(masks or {})
        self.cores = find_cores(self.capture)
        self.cache: dict = {"preferred": preferred_splits(self.capture, self.cores)}
        self.ctx, self.decision = self._best_layout()

    @property
    def requested(self) -> bool:
        """Whether a norm's mask asks to remove hidden channels (the result is then the smaller
        architecture, not the masked model's function)."""
        return any(bool(remove.any()) for _, remove, _ in self.ctx.classes.requests)

    def _run(self, choices: dict) -> tuple[Context, Decision]:
        ctx = propagate(self.capture, self.masks, choices, self.rules, self.cache)
        return ctx, _keep_one_channel(ctx, decide(ctx.classes))

    @staticmethod
    def _score(decision: Decision) -> int:
        return int(decision.removed_slots.sum())

    def _best_layout(self) -> tuple[Context, Decision]:
        """Greedy choice of the carrier dimension at every channel split (heads vs. groups)."""
        choices: dict = {}
        ctx, decision = self._run(choices)
        open_splits = {key: count for key, count in ctx.splits.items() if key[0] not in ctx.preferred}
        if not self.masks or not open_splits or len(open_splits) > MAX_SPLIT_TRIALS:
            return ctx, decision
        best = self._score(decision)
        for key, count in open_splits.items():
            for alternative in range(count):
                trial = {**choices, key: alternative}
                trial_ctx, trial_decision = self._run(trial)
                score = self._score(trial_decision)
                if score > best:
                    best, choices, ctx, decision = score, trial, trial_ctx, trial_decision
        return ctx, decision

    def layer_slots(self, key: str = "out") -> dict[str, np.ndarray]:
        """Class roots of each layer's recorded axis (``"out"``: output channels of conv/linear;
        depthwise convolutions report their ``"channels"``)."""
        roots = self.decision.roots
        found = {}
        for (owner, axis), slots in self.ctx.records.items():
            if owner.startswith("attr:"):
                continue
            if axis == key or (key == "out" and axis == "channels"
                               and isinstance(self.capture.get_submodule(owner), nn.modules.conv._ConvNd)):
                found[owner] = roots[slots]
        return found


def _keep_one_channel(ctx: Context, decision: Decision) -> Decision:
    """A layer never loses all its channels: keep the first class of any axis emptied."""
    removed = set(decision.removed)
    changed = True
    while changed and removed:
        changed = False
        flags = np.isin(decision.roots, np.fromiter(removed, dtype=np.int64))
        for (owner, axis), slots in ctx.records.items():
            if not owner.startswith("attr:") and len(slots) and flags[slots].all():
                removed.discard(int(decision.roots[slots[0]]))
                changed = True
                break
    if len(removed) == len(decision.removed):
        return decision
    kept_by = dict(decision.kept_by)
    kept_by["a layer keeps at least one channel"] = len(decision.removed) - len(removed)
    flags = np.isin(decision.roots, np.fromiter(removed, dtype=np.int64)) if removed else \
        np.zeros(len(decision.roots), dtype=bool)
    return attrs.evolve(decision, removed=frozenset(removed), kept_by=kept_by, removed_slots=flags)


def coupled_sets(analysis: Analysis) -> list[set[str]]:
    """Sets of layer names whose output channels are coupled index by index (channel ``i`` of one
    is channel ``i`` of every other: prune the same indices). Layers coupled only partially
    (a channel shuffle mixing a wide and a narrow layer) are not put together."""
    layers = analysis.layer_slots("out")
    owner_of: dict[bytes, str] = {}
    parent = {name: name for name in layers}

    def find(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return parent[name]

    for name, roots in layers.items():
        if np.all(roots == 0):
            continue
        other = owner_of.setdefault(roots.tobytes(), name)
        if other != name:
            parent[find(name)] = find(other)
    sets: dict[str, set[str]] = {}
    for name in layers:
        sets.setdefault(find(name), set()).add(name)
    return list(sets.values())


def find_attention_groups(model: nn.Module, dummy_input: Any) -> list[AttentionGroup]:
    """The multi-head attentions of ``model``, found from one captured forward on ``dummy_input``.

    Finds ``scaled_dot_product_attention`` calls and the eager ``softmax(q @ k^T) @ v`` pattern,
    then walks back from query, key and value to the projections that produce them (a fused
    ``[q | k | v]`` projection counts once) and forward to the output projection. Attentions whose
    projections are not single modules (``nn.MultiheadAttention`` keeps its own) are left out.
    """
    rules = extra_rules()
    args, kwargs = split_inputs(dummy_input)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        captured = capture(model, args, kwargs, lambda module: find_rule(module, rules) is not None,
                           tuple(rules) + builtin_leaf_types())
    finally:
        for module, mode in modes.items():
            module.training = mode
    groups = []
    for core in find_cores(captured):
        names = []
        for node in (core.q, core.k, core.v):
            view = split_view(node, captured.values)
            names.append(projection(view)[0] if view is not None else None)
        out = output_projection(core.node)
        if None in names or out is None:
            continue
        values = captured.values
        q_heads, head_dim = int(values[core.q].shape[-3]), int(values[core.q].shape[-1])
        k_view = split_view(core.k, values)
        kv_heads = int(values[k_view].shape[-2])
        groups.append(AttentionGroup(name=module_path(core.node), q=names[0], k=names[1], v=names[2], o=out,
                                     num_heads=q_heads, num_kv_heads=kv_heads, head_dim=head_dim,
                                     fused=len(set(names)) == 1))
    return groups
