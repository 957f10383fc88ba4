"""Per-module-type shrinking rules and the registry users and plugins extend.

A rule does two things: during analysis it tells how channels flow through the module
(:meth:`ShrinkRule.propagate`), and afterwards it slices the module in place given the indices
that stay (:meth:`ShrinkRule.shrink`). Register a rule for your own module type with
:func:`register_shrink_rule`; a plugin ships rules through the ``register_shrink_rules`` hook.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from nncore.errors import ConfigError
from nncore.speedup import functions
from nncore.speedup.fold import folded_inputs
from nncore.speedup.groups import GroupConstraint
from nncore.speedup.info import TInfo, no_zero, pinned_vector, zero_slabs
from nncore.speedup.propagate import Context

Kept = Callable[[str], "np.ndarray | None"]


class ShrinkRule:
    """How one module type is analysed and sliced. Subclass and override both methods.

    ``propagate`` receives the analysis context, the graph node, the module, the infos of the
    positional inputs and the real output value; it returns the info of the output. Use
    ``ctx.record(name, key, slots)`` for every axis you will slice, ``ctx.classes.read(slots, ok)``
    where the module mixes channels, and ``ctx.classes.new(n)`` for the channels it creates.
    ``shrink`` receives the module and ``kept(key)``: the indices that stay on a recorded axis
    (``None`` when nothing was recorded). It slices in place and returns ``None``, or returns a
    replacement module.
    """

    def propagate(self, ctx: Context, node: fx.Node, module: nn.Module, inputs: list, output: Any) -> Any:
        """The info of the module's output (default: a barrier that keeps every channel)."""
        return ctx.barrier(node, output)

    def shrink(self, module: nn.Module, kept: Kept) -> nn.Module | None:
        """Slice ``module`` to the kept indices (default: nothing to slice)."""
        return None


def _slice(tensor: torch.Tensor | None, index: np.ndarray, dim: int) -> torch.Tensor | None:
    if tensor is None:
        return None
    return tensor.index_select(dim, torch.as_tensor(index, dtype=torch.long, device=tensor.device))


def _set_param(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    old = getattr(module, name)
    if value is None or old is None:
        return
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value.detach(), requires_grad=old.requires_grad))
    else:
        setattr(module, name, value.detach())


class ConvRule(ShrinkRule):
    """``nn.Conv1d/2d/3d``: output channels, input channels, groups and depthwise."""

    def propagate(self, ctx, node, module, inputs, output):
        x = inputs[0]
        if not isinstance(x, TInfo) or x.ndim != output.dim():
            return ctx.barrier(node, output)
        name = str(node.target)
        groups = module.groups
        cin, cout = module.in_channels, module.out_channels
        masked = ctx.is_masked(name)
        bias_zero = np.ones(cout, bool) if module.bias is None else (
            (module.bias.detach() == 0).numpy() if masked else np.zeros(cout, bool))
        filter_zero, column_zero = np.zeros(cout, bool), np.zeros(cin, bool)
        if masked:  # masks hold 0/1: a row or column sums to 0 when all of it is pruned
            cached = ctx.cache.get((name, "zeros"))
            if cached is None:
                mask = ctx.weight_mask(name).detach().to(torch.float32)  # sums by matrix-vector products
                filter_zero = (mask.reshape(cout, -1) @ mask.new_ones(mask[0].numel()) == 0).numpy()
                per_group = mask.new_ones(groups, 1, cout // groups) @ mask.reshape(groups, cout // groups, -1)
                column_zero = (per_group.reshape(groups, cin // groups, -1).sum(dim=2) == 0).reshape(cin).numpy()
                cached = ctx.cache[(name, "zeros")] = (filter_zero, column_zero)
            filter_zero, column_zero = cached
            ctx.filter_zero[name] = filter_zero
        if groups == cin == cout:
            out_slots = x.slots[1]
            ctx.record(name, "channels", out_slots)
            zero = (filter_zero | x.zero[1]) & bias_zero
        else:
            out_slots = ctx.classes.new(cout)
            ctx.classes.read(x.slots[1], x.zero[1] | column_zero | folded_inputs(ctx, node, module, x, 1))
            ctx.record(name, "in", x.slots[1])
            ctx.record(name, "out", out_slots)
            if groups > 1:
                ctx.classes.constrain_groups(GroupConstraint(name, groups, x.slots[1], out_slots))
            zero = filter_zero & bias_zero
        slots = [x.slots[0], out_slots] + [pinned_vector(n) for n in output.shape[2:]]
        zeros = [no_zero(output.shape[0]), zero] + [no_zero(n) for n in output.shape[2:]]
        return TInfo(slots, zeros)

    def shrink(self, module, kept):
        channels = kept("channels")
        if channels is not None:
            _set_param(module, "weight", _slice(module.weight, channels, 0))
            _set_param(module, "bias", _slice(module.bias, channels, 0))
            module.in_channels = module.out_channels = module.groups = len(channels)
            return None
        keep_in, keep_out = kept("in"), kept("out")
        groups, cin, cout = module.groups, module.in_channels, module.out_channels
        if groups == 1:
            _set_param(module, "weight", _slice(_slice(module.weight, keep_out, 0), keep_in, 1))
            _set_param(module, "bias", _slice(module.bias, keep_out, 0))
            module.in_channels, module.out_channels = len(keep_in), len(keep_out)
            return None
        in_per, out_per = cin // groups, cout // groups
        pieces = []
        for g in range(groups):
            outs = keep_out[(keep_out >= g * out_per) & (keep_out < (g + 1) * out_per)]
            ins = keep_in[(keep_in >= g * in_per) & (keep_in < (g + 1) * in_per)] - g * in_per
            pieces.append(_slice(_slice(module.weight, outs, 0), ins, 1))
        _set_param(module, "weight", torch.cat(pieces, 0))
        _set_param(module, "bias", _slice(module.bias, keep_out, 0))
        module.in_channels, module.out_channels = len(keep_in), len(keep_out)
        return None


class LinearRule(ShrinkRule):
    """``nn.Linear``: input and output features on the last dimension."""

    def propagate(self, ctx, node, module, inputs, output):
        x = inputs[0]
        if not isinstance(x, TInfo):
            return ctx.barrier(node, output)
        name = str(node.target)
        masked = ctx.is_masked(name)
        weight = ctx.weight_mask(name) if masked else module.weight.detach()
        column_zero = zero_slabs(weight, 1) if masked else np.zeros(weight.shape[1], bool)
        ctx.classes.read(x.slots[-1], x.zero[-1] | column_zero | folded_inputs(ctx, node, module, x, x.ndim - 1))
        out_slots = ctx.classes.new(module.out_features)
        bias_zero = np.ones(module.out_features, bool) if module.bias is None else (
            (module.bias.detach() == 0).numpy() if masked else np.zeros(module.out_features, bool))
        filter_zero = zero_slabs(weight, 0) if masked else np.zeros(module.out_features, bool)
        if masked:
            ctx.filter_zero[name] = filter_zero
        zero = filter_zero & bias_zero
        ctx.record(name, "in", x.slots[-1])
        ctx.record(name, "out", out_slots)
        lead = x.slots[:-1]
        return TInfo(lead + [out_slots], [no_zero(len(s)) for s in lead] + [zero])

    def shrink(self, module, kept):
        keep_in, keep_out = kept("in"), kept("out")
        _set_param(module, "weight", _slice(_slice(module.weight, keep_out, 0), keep_in, 1))
        _set_param(module, "bias", _slice(module.bias, keep_out, 0))
        module.in_features, module.out_features = len(keep_in), len(keep_out)
        return None


class BatchNormRule(ShrinkRule):
    """``nn.BatchNorm1d/2d/3d``: per-channel parameters and running statistics on dim 1."""

    def propagate(self, ctx, node, module, inputs, output):
        x = inputs[0]
        if not isinstance(x, TInfo) or x.ndim < 2:
            return ctx.barrier(node, output)
        name = str(node.target)
        ctx.record(name, "channels", x.slots[1])
        zero = np.zeros(len(x.slots[1]), bool)
        if module.affine and ctx.is_masked(name):
            zero = (module.weight.detach() == 0).numpy() & (module.bias.detach() == 0).numpy()
        out = x.without_zero()
        out.zero[1] = zero
        return out

    def shrink(self, module, kept):
        keep = kept("channels")
        for attr in ("weight", "bias", "running_mean", "running_var"):
            if getattr(module, attr, None) is not None:
                _set_param(module, attr, _slice(getattr(module, attr), keep, 0))
        module.num_features = len(keep)
        return None


class ChannelwiseRule(ShrinkRule):
    """A module that acts on each channel of dimension ``dim`` on its own (a per-channel scale,
    an activation). ``params`` are sliced along their axis of the channel count;
    ``keeps_zero`` says a zero channel stays zero (``f(0) == 0``)."""

    def __init__(self, dim: int = 1, params: tuple[str, ...] = (), keeps_zero: bool = False) -> None:
        self.dim, self.params, self.keeps_zero = dim, tuple(params), keeps_zero

    def propagate(self, ctx, node, module, inputs, output):
        x = inputs[0]
        if not isinstance(x, TInfo) or tuple(x.sizes()) != tuple(output.shape):
            return ctx.barrier(node, output)
        ctx.record(str(node.target), "channels", x.slots[self.dim])
        return x if self.keeps_zero else x.without_zero()

    def shrink(self, module, kept):
        keep = kept("channels")
        for name in self.params:
            tensor = getattr(module, name, None)
            if tensor is None:
                continue
            axes = [a for a, n in enumerate(tensor.shape) if n > 1]
            if len(axes) == 1:
                _set_param(module, name, _slice(tensor, keep, axes[0]))
        return None


class FunctionRule(ShrinkRule):
    """A parameter-free module that behaves like the functional op ``name`` (``nn.ReLU`` ...)."""

    def __init__(self, name: str, dim_attr: str | None = None) -> None:
        self.name, self.dim_attr = name, dim_attr

    def propagate(self, ctx, node, module, inputs, output):
        x = inputs[0]
        if not isinstance(x, TInfo):
            return ctx.barrier(node, output)
        if self.name in functions.KEEP_ZERO:
            return x
        if self.name in functions.NO_ZERO:
            return x.without_zero()
        if self.name in functions.POOLS:
            out = functions.channelwise(x, output[0] if isinstance(output, tuple) else output)
            return (out, out.without_zero()) if isinstance(output, tuple) else out
        if self.name == "reshape":
            from nncore.speedup import shapes

            return shapes.reshape(ctx, node, x, output.shape)
        if self.name == "pin":
            dims = getattr(module, self.dim_attr) if self.dim_attr else 1
            dims = range(-len(dims), 0) if isinstance(dims, (tuple, list)) else [1 if dims is None else dims]
            for d in dims:
                ctx.classes.pin(x.slots[d], f"{ctx.op_label(node)} (mixes channels)")
            return x.without_zero()
        return ctx.barrier(node, output)


_KEEP = ["ReLU", "ReLU6", "LeakyReLU", "GELU", "SiLU", "Hardswish", "Mish", "ELU", "SELU", "CELU",
         "Tanh", "Hardtanh", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "Identity",
         "Softshrink", "Hardshrink", "Tanhshrink"]
_NO_ZERO = ["Sigmoid", "Hardsigmoid", "Softplus", "LogSigmoid"]
_POOL = ["MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d",
         "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d",
         "AdaptiveMaxPool3d", "Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d", "LPPool2d"]

_BUILTIN: dict[type, ShrinkRule] = {
    nn.Conv1d: ConvRule(), nn.Conv2d: ConvRule(), nn.Conv3d: ConvRule(), nn.Linear: LinearRule(),
    nn.BatchNorm1d: BatchNormRule(), nn.BatchNorm2d: BatchNormRule(), nn.BatchNorm3d: BatchNormRule(),
    nn.SyncBatchNorm: BatchNormRule(), nn.Flatten: FunctionRule("reshape"), nn.Unflatten: FunctionRule("reshape"),
    nn.LayerNorm: FunctionRule("pin", "normalized_shape"), nn.GroupNorm: FunctionRule("pin"),
    nn.Softmax: FunctionRule("pin", "dim"), nn.LogSoftmax: FunctionRule("pin", "dim"),
    nn.PReLU: ChannelwiseRule(dim=1, params=("weight",), keeps_zero=True),
}
for _name in _KEEP:
    _BUILTIN[getattr(nn, _name)] = FunctionRule("relu")
for _name in _NO_ZERO:
    _BUILTIN[getattr(nn, _name)] = FunctionRule("sigmoid")
for _name in _POOL:
    _BUILTIN[getattr(nn, _name)] = FunctionRule("max_pool2d")

_USER: dict[type, ShrinkRule] = {}


def register_shrink_rule(module_type: type, rule: ShrinkRule) -> None:
    """Use ``rule`` to analyse and slice every module of ``module_type`` (and its subclasses).

    Registered rules take precedence over plugin rules and the built-in ones. Modules of this
    type are traced as single units (their ``forward`` is not looked into).

    :raises ConfigError: ``module_type`` is not an ``nn.Module`` subclass or ``rule`` not a ShrinkRule.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise ConfigError(f"register_shrink_rule: module_type must be an nn.Module subclass, got {module_type!r}",
                          header="invalid shrink rule")
    if not isinstance(rule, ShrinkRule):
        raise ConfigError(f"register_shrink_rule: rule for {module_type.__name__} must be a ShrinkRule "
                          f"instance, got {type(rule).__name__}", header="invalid shrink rule")
    _USER[module_type] = rule


def unregister_shrink_rule(module_type: type) -> None:
    """Forget the rule registered for ``module_type`` (no error if there is none)."""
    _USER.pop(module_type, None)


def plugin_rules() -> dict[type, ShrinkRule]:
    """Rules shipped by plugins through the ``register_shrink_rules`` hook."""
    try:
        from nncore.registry import plugin_manager
    except ImportError:  # registry not available: no plugin rules
        return {}
    hook = getattr(plugin_manager().hook, "register_shrink_rules", None)
    if hook is None:
        return {}
    rules: dict[type, ShrinkRule] = {}
    for answer in hook():
        for module_type, rule in answer or []:
            if isinstance(module_type, type) and isinstance(rule, ShrinkRule):
                rules[module_type] = rule
    return rules


def builtin_leaf_types() -> tuple[type, ...]:
    """Module types with a built-in rule: subclasses (``Conv2dSame``-style) are traced as units."""
    return tuple(_BUILTIN) + (nn.MultiheadAttention,)


def extra_rules() -> dict[type, ShrinkRule]:
    """User rules over plugin rules: the types traced as units."""
    return {**plugin_rules(), **_USER}


def find_rule(module: nn.Module, extra: dict[type, ShrinkRule]) -> ShrinkRule | None:
    for table in (extra, _BUILTIN):
        for klass in type(module).__mro__:
            if klass in table:
                return table[klass]
    if isinstance(module, nn.MultiheadAttention):
        from nncore.speedup.mha import MultiheadAttentionRule

        return MultiheadAttentionRule()
    return None


def call_module(ctx: Context, node: fx.Node, value: Any) -> Any:
    """The info of a call_module node, through the module's rule (a barrier when it has none)."""
    module = ctx.gm.get_submodule(str(node.target))
    rule = find_rule(module, ctx.extra_rules)
    if rule is None:
        return ctx.barrier(node, value)
    inputs = [ctx.info(a) for a in node.args]
    return rule.propagate(ctx, node, module, inputs, value)
