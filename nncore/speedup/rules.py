"""Per-module-type shrinking rules for torch's own layers.

A rule does two things: during analysis it tells how channels flow through the module
(:meth:`ShrinkRule.propagate`), and afterwards it slices the module in place given the indices
that stay (:meth:`ShrinkRule.shrink`). Which rule serves which module type is decided in
:mod:`nncore.speedup.ruletable`.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from nncore.speedup import functions, shapes
from nncore.speedup.norms import norm_channels
from nncore.speedup.fold import folded_inputs
from nncore.speedup.groups import GroupConstraint
from nncore.speedup.info import TInfo, no_zero, pinned_vector, zero_slabs
from nncore.speedup.context import Context

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

    def applies_to(self, module: nn.Module) -> bool:
        """Whether this rule describes ``module`` (default: every module of the registered type)."""
        return True

    def axis_params(self, module: nn.Module, key: str) -> list[tuple[torch.Tensor, int]]:
        """The parameters sliced along axis ``key``, as ``(tensor, dim)`` (for group importance)."""
        return []


def _slice(tensor: torch.Tensor | None, index: np.ndarray, dim: int) -> torch.Tensor | None:
    if tensor is None:
        return None
    return tensor.index_select(dim, torch.as_tensor(index, dtype=torch.long, device=tensor.device))


def _slice_2d(tensor: torch.Tensor, rows: np.ndarray, columns: np.ndarray) -> torch.Tensor:
    """``tensor`` with only ``rows`` of dimension 0 and ``columns`` of dimension 1, in one copy: an
    axis that keeps everything is not copied, and when both lose indices one indexing op gathers
    the result (no intermediate tensor the size of the first slice: on a 1B-parameter model that
    intermediate is the peak of the shrink)."""
    if len(rows) == tensor.shape[0]:
        return _slice(tensor, columns, 1)
    if len(columns) == tensor.shape[1]:
        return _slice(tensor, rows, 0)
    device = tensor.device
    row_index = torch.as_tensor(rows, dtype=torch.long, device=device).view(-1, 1)
    return tensor[row_index, torch.as_tensor(columns, dtype=torch.long, device=device)]


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
            _set_param(module, "weight", _slice_2d(module.weight, keep_out, keep_in))
            _set_param(module, "bias", _slice(module.bias, keep_out, 0))
            module.in_channels, module.out_channels = len(keep_in), len(keep_out)
            return None
        in_per, out_per = cin // groups, cout // groups
        pieces = []
        for g in range(groups):
            outs = keep_out[(keep_out >= g * out_per) & (keep_out < (g + 1) * out_per)]
            ins = keep_in[(keep_in >= g * in_per) & (keep_in < (g + 1) * in_per)] - g * in_per
            pieces.append(_slice_2d(module.weight, outs, ins))
        _set_param(module, "weight", torch.cat(pieces, 0))
        _set_param(module, "bias", _slice(module.bias, keep_out, 0))
        module.in_channels, module.out_channels = len(keep_in), len(keep_out)
        return None

    def axis_params(self, module, key):
        if key in ("out", "channels"):
            return [(module.weight, 0)] + ([(module.bias, 0)] if module.bias is not None else [])
        return [(module.weight, 1)] if key == "in" and module.groups == 1 else []


class LinearRule(ShrinkRule):
    """``nn.Linear``: input and output features on the last dimension."""

    out_axis = 0
    """The weight's axis of the output features (the other one holds the inputs)."""

    def propagate(self, ctx, node, module, inputs, output):
        x = inputs[0]
        if not isinstance(x, TInfo):
            return ctx.barrier(node, output)
        name = str(node.target)
        masked = ctx.is_masked(name)
        weight = ctx.weight_mask(name) if masked else module.weight.detach()
        out_axis, in_axis = self.out_axis, 1 - self.out_axis
        width = weight.shape[out_axis]
        column_zero = zero_slabs(weight, in_axis) if masked else np.zeros(weight.shape[in_axis], bool)
        ctx.classes.read(x.slots[-1], x.zero[-1] | column_zero | folded_inputs(ctx, node, module, x, x.ndim - 1))
        out_slots = ctx.classes.new(width)
        bias_zero = np.ones(width, bool) if module.bias is None else (
            (module.bias.detach() == 0).numpy() if masked else np.zeros(width, bool))
        filter_zero = zero_slabs(weight, out_axis) if masked else np.zeros(width, bool)
        if masked:
            ctx.filter_zero[name] = filter_zero
        zero = filter_zero & bias_zero
        ctx.record(name, "in", x.slots[-1])
        ctx.record(name, "out", out_slots)
        lead = x.slots[:-1]
        return TInfo(lead + [out_slots], [no_zero(len(s)) for s in lead] + [zero])

    def shrink(self, module, kept):
        keep_in, keep_out = kept("in"), kept("out")
        rows, columns = (keep_out, keep_in) if self.out_axis == 0 else (keep_in, keep_out)
        _set_param(module, "weight", _slice_2d(module.weight, rows, columns))
        _set_param(module, "bias", _slice(module.bias, keep_out, 0))
        self.set_sizes(module, len(keep_in), len(keep_out))
        return None

    def set_sizes(self, module: nn.Module, inputs: int, outputs: int) -> None:
        module.in_features, module.out_features = inputs, outputs

    def axis_params(self, module, key):
        if key == "out":
            return [(module.weight, self.out_axis)] + ([(module.bias, 0)] if module.bias is not None else [])
        return [(module.weight, 1 - self.out_axis)] if key == "in" else []


class Conv1DRule(LinearRule):
    """Hugging Face's ``Conv1D`` (GPT-2): a linear layer whose weight is stored ``(in, out)``."""

    out_axis = 1

    def set_sizes(self, module, inputs, outputs):
        module.nf = outputs
        if hasattr(module, "nx"):
            module.nx = inputs

    def applies_to(self, module):
        weight = getattr(module, "weight", None)
        return isinstance(weight, torch.Tensor) and weight.dim() == 2 and getattr(module, "nf", None) == weight.shape[1]


class EmbeddingRule(ShrinkRule):
    """``nn.Embedding``: the embedding dimension (columns of the table); the indices are read as is."""

    def propagate(self, ctx, node, module, inputs, output):
        name = str(node.target)
        dim = ctx.classes.new(module.embedding_dim)
        ctx.record(name, "dim", dim)
        zero = zero_slabs(ctx.weight_mask(name), 1) if ctx.is_masked(name) else no_zero(module.embedding_dim)
        lead = [pinned_vector(n) for n in output.shape[:-1]]
        return TInfo(lead + [dim], [no_zero(n) for n in output.shape[:-1]] + [zero])

    def shrink(self, module, kept):
        keep = kept("dim")
        _set_param(module, "weight", _slice(module.weight, keep, 1))
        module.embedding_dim = len(keep)
        return None

    def axis_params(self, module, key):
        return [(module.weight, 1)] if key == "dim" else []


class NormRule(ShrinkRule):
    """``nn.LayerNorm`` / ``nn.RMSNorm`` (and RMSNorm modules of model libraries) over the last
    dimension; see :mod:`nncore.speedup.norms` for what a mask on them means."""

    def propagate(self, ctx, node, module, inputs, output):
        x = inputs[0]
        shape = getattr(module, "normalized_shape", (x.sizes()[-1],) if isinstance(x, TInfo) else ())
        if not isinstance(x, TInfo) or len(tuple(shape)) != 1:
            return FunctionRule("pin", "normalized_shape").propagate(ctx, node, module, inputs, output)
        name = str(node.target)
        ctx.record(name, "channels", x.slots[-1])
        return norm_channels(ctx, node, x, name, type(module).__name__)

    def shrink(self, module, kept):
        keep = kept("channels")
        for attr in ("weight", "bias"):
            if isinstance(getattr(module, attr, None), torch.Tensor):
                _set_param(module, attr, _slice(getattr(module, attr), keep, 0))
        if hasattr(module, "normalized_shape"):
            module.normalized_shape = (len(keep),)
        return None

    def applies_to(self, module):
        if isinstance(module, nn.LayerNorm):  # a subclass with its own forward (LayerNorm2d) is looked into
            return type(module).forward is nn.LayerNorm.forward
        if isinstance(module, getattr(nn, "RMSNorm", ())):
            return type(module).forward is nn.RMSNorm.forward
        weight = getattr(module, "weight", None)
        return (type(module).__name__.endswith("RMSNorm") and isinstance(weight, torch.Tensor) and weight.dim() == 1
                and not list(module.children()) and len(list(module.parameters())) == 1)

    def axis_params(self, module, key):
        return [(getattr(module, attr), 0) for attr in ("weight", "bias")
                if key == "channels" and isinstance(getattr(module, attr, None), torch.Tensor)]


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

    def axis_params(self, module, key):
        return [(getattr(module, attr), 0) for attr in ("weight", "bias")
                if key == "channels" and isinstance(getattr(module, attr, None), torch.Tensor)]


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
            return shapes.reshape(ctx, node, x, output.shape)
        if self.name == "pin":
            dims = getattr(module, self.dim_attr) if self.dim_attr else 1
            dims = range(-len(dims), 0) if isinstance(dims, (tuple, list)) else [1 if dims is None else dims]
            for d in dims:
                ctx.classes.pin(x.slots[d], f"{ctx.op_label(node)} (mixes channels)")
            return x.without_zero()
        return ctx.barrier(node, output)
