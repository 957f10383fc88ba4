"""Handlers for functions, tensor methods and Python operators in the traced graph."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx

from nncore.speedup import attention, norms, shapes
from nncore.speedup.graph import op_name
from nncore.speedup.info import TInfo, no_zero, norm_dim, pinned_vector
from nncore.speedup.context import Context, unknown_info

KEEP_ZERO = {
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "gelu", "silu",
    "silu_", "hardswish", "hardswish_", "mish", "elu", "elu_", "selu", "celu", "tanh", "tanh_", "neg",
    "abs", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "contiguous", "clone", "detach", "float", "half", "double", "bfloat16", "to", "type", "type_as",
    "sign", "sqrt", "square", "erf", "sin", "identity", "requires_grad_", "cpu", "cuda",
    "hardshrink", "softshrink", "tanhshrink", "prelu", "data", "real",
    "stochastic_depth",  # torchvision.ops: identity, or whole samples scaled/dropped in training
}
NO_ZERO = {
    "sigmoid", "sigmoid_", "hardsigmoid", "exp", "cos", "rsqrt", "reciprocal", "softplus", "log",
    "log1p", "expm1", "logsigmoid", "clamp", "clamp_", "clip", "clamp_min", "clamp_max", "pow",
}
SUMS = {"add": "and", "sub": "and", "rsub": "and", "maximum": "and", "minimum": "and",
        "mul": "or", "div": "first", "true_divide": "first"}
POOLS = {
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "lp_pool1d", "lp_pool2d", "interpolate",
    "upsample", "upsample_nearest", "upsample_bilinear", "max_pool2d_with_indices",
}
VIEWS = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as",
         "squeeze_", "unsqueeze_", "ravel"}
REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod",
              "nansum", "nanmean"}
FRESH = {"zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like",
         "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor"}
"""Ops whose output only borrows its input's shape (or dtype): the input's channels are not read."""
SHAPE_ATTRS = {"size", "dim", "numel", "ndimension", "nelement", "getattr", "is_contiguous", "__len__"}


def _arg(args, kwargs, index: int, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _tensor_infos(ctx: Context, node: fx.Node) -> list[TInfo]:
    found = []
    pending = [ctx.info(arg) for arg in list(node.args) + list(node.kwargs.values())]
    while pending:
        info = pending.pop()
        if isinstance(info, TInfo):
            found.append(info)
        elif isinstance(info, (list, tuple)):
            pending.extend(info)
    return found


def elementwise(ctx: Context, operands: list, value: torch.Tensor, mode: str) -> TInfo:
    """Broadcasting element-wise op: aligned channels are merged into one class.

    ``mode``: how zeros combine ("and": all operands zero, "or": any, "first": the first
    operand's, "none": never zero).
    """
    shape = value.shape
    ndim = len(shape)
    slots, zeros = [], []
    for d in range(ndim):
        size = shape[d]
        vectors, zs = [], []
        for k, operand in enumerate(operands):
            if isinstance(operand, TInfo):
                od = d - (ndim - operand.ndim)
                if od < 0:
                    zs.append(no_zero(size))
                    continue
                if len(operand.slots[od]) == size:
                    vectors.append(operand.slots[od])
                    zs.append(operand.zero[od])
                else:
                    zs.append(np.full(size, bool(operand.zero[od][0])))
            else:
                is_zero = isinstance(operand, (int, float, bool)) and operand == 0
                zs.append(np.full(size, is_zero) if mode != "or" else no_zero(size))
            if mode == "first" and k == 0:
                break
        if vectors:
            for other in vectors[1:]:
                ctx.classes.union_vectors(vectors[0], other)
            slots.append(vectors[0])
        else:
            slots.append(pinned_vector(size))
        if mode == "none" or not zs:
            zeros.append(no_zero(size))
        elif mode == "and":
            zeros.append(np.logical_and.reduce(zs))
        elif mode == "or":
            zeros.append(np.logical_or.reduce(zs))
        else:
            zeros.append(zs[0])
    return TInfo(slots, zeros)


def channelwise(info: TInfo, value: torch.Tensor, keep_dims: int = 2, keep_zero: bool = True) -> TInfo:
    """Ops that act per channel (pooling, resizing): batch and channel dims kept, others new."""
    slots, zeros = [], []
    for d, size in enumerate(value.shape):
        if d < keep_dims and d < info.ndim and len(info.slots[d]) == size:
            slots.append(info.slots[d])
            zeros.append(info.zero[d] if keep_zero else no_zero(size))
        else:
            slots.append(pinned_vector(size))
            zeros.append(no_zero(size))
    return TInfo(slots, zeros)


def _getitem(ctx: Context, node: fx.Node, info: Any, index: Any, value: Any) -> Any:
    if not isinstance(info, TInfo):
        if isinstance(info, (list, tuple)) and isinstance(index, (int, slice)):
            return info[index]
        return unknown_info(value) if info is None else ctx.barrier(node, value)
    items = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, (torch.Tensor, list)) or (i is not None and not isinstance(i, (int, slice)) and i is not Ellipsis)
           for i in items):
        return ctx.barrier(node, value, f"advanced indexing ({ctx.op_label(node)})")
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    placed, d = [], 0  # (item, source dim or None)
    for item in items:
        if item is None:
            placed.append((None, None))
        elif item is Ellipsis:
            for _ in range(info.ndim - consumed):
                placed.append((slice(None), d))
                d += 1
        else:
            placed.append((item, d))
            d += 1
    placed += [(slice(None), k) for k in range(d, info.ndim)]
    selected = sorted(((dim, item) for item, dim in placed if isinstance(item, int)), reverse=True)
    current = info
    for dim, item in selected:
        ctx.classes.pin(info.slots[dim][item:item + 1] if item >= 0 else info.slots[dim][item:][:1],
                        f"{ctx.op_label(node)} (selects one channel)")
        current = current.select(dim, item % len(info.slots[dim]))
    slots, zeros, keep_grid = [], [], True
    for item, dim in placed:
        if item is None:
            slots.append(pinned_vector(1))
            zeros.append(no_zero(1))
            keep_grid = False
        elif isinstance(item, slice):
            k = dim - sum(1 for other, _ in selected if other < dim)
            if item.step not in (None, 1):
                ctx.classes.pin(current.slots[k], f"{ctx.op_label(node)} (strided slice of channels)")
            if item != slice(None):
                keep_grid = False
            slots.append(current.slots[k][item])
            zeros.append(current.zero[k][item])
    return TInfo(slots, zeros, current.grid if keep_grid else None)


def _matmul(ctx: Context, node: fx.Node, a: TInfo, b: TInfo, value: torch.Tensor) -> TInfo:
    if a.ndim < 2 or b.ndim < 2:
        return ctx.barrier(node, value, f"{ctx.op_label(node)} (1-d matrix product)")
    ctx.classes.union_vectors(a.slots[-1], b.slots[-2])
    ctx.classes.read(a.slots[-1], a.zero[-1] | b.zero[-2])
    batch_shape = value.shape[:-2]
    batch = elementwise(ctx, [TInfo(a.slots[:-2], a.zero[:-2]), TInfo(b.slots[:-2], b.zero[:-2])],
                        torch.empty(batch_shape, device="meta"), "or")
    return TInfo(batch.slots + [a.slots[-2], b.slots[-1]], batch.zero + [a.zero[-2], b.zero[-1]])


def _reduction(ctx: Context, node: fx.Node, name: str, info: TInfo, args, kwargs, value) -> Any:
    dims = _arg(args, kwargs, 1, "dim")
    if dims is None and name in ("max", "min") and len(args) > 1 and isinstance(args[1], torch.Tensor):
        return elementwise(ctx, [info, ctx.info(node.args[1])], value, "and")
    summing = name in ("sum", "nansum")  # a zero channel adds nothing: it may go
    if dims is None:
        if summing:
            for slots, zero in zip(info.slots, info.zero):
                ctx.classes.read(slots, zero)
        else:
            ctx.pin_all(info, f"{ctx.op_label(node)} (reduces the whole tensor)")
        return unknown_info(value)
    dims = [norm_dim(int(d), info.ndim) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
    keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
    for d in dims:
        if summing:
            ctx.classes.read(info.slots[d], info.zero[d])
        else:
            ctx.classes.pin(info.slots[d], f"{ctx.op_label(node)} (reduces over channels)")
    slots, zeros = [], []
    for d in range(info.ndim):
        if d in dims:
            if keepdim:
                slots.append(pinned_vector(1))
                zeros.append(no_zero(1))
        else:
            slots.append(info.slots[d])
            zeros.append(info.zero[d] if name in ("mean", "sum", "amax", "amin", "max", "min", "nansum") else no_zero(len(info.zero[d])))
    out = TInfo(slots, zeros)
    if isinstance(value, tuple):
        return (out, out.without_zero())
    return out


def _pad(ctx: Context, node: fx.Node, info: TInfo, pad, value: torch.Tensor) -> TInfo:
    """``F.pad``: padded dimensions get new (unremovable) indices, the others pass through."""
    padded = {info.ndim - 1 - k for k in range(len(pad) // 2) if pad[2 * k] or pad[2 * k + 1]}
    mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
    fill = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
    keeps_zero = mode != "constant" or not fill
    slots, zeros = [], []
    for d in range(info.ndim):
        if d in padded:
            ctx.classes.pin(info.slots[d], f"{ctx.op_label(node)} (pads channels)")
            slots.append(pinned_vector(value.shape[d]))
            zeros.append(no_zero(value.shape[d]))
        else:
            slots.append(info.slots[d])
            zeros.append(info.zero[d] if keeps_zero else no_zero(len(info.zero[d])))
    return TInfo(slots, zeros)


def _setitem(ctx: Context, node: fx.Node, target: Any, value: Any) -> Any:
    """``x[index] = y``: the written channels now hold ``y``'s; plain slices keep the channels
    aligned, anything else keeps them."""
    source = ctx.info(node.args[2]) if len(node.args) > 2 else None
    if not isinstance(target, TInfo):
        return unknown_info(value)
    index = ctx.value(node.args[1])
    items = index if isinstance(index, tuple) else (index,)
    plain = all(isinstance(i, slice) and i == slice(None) for i in items if i is not Ellipsis)
    if isinstance(source, TInfo) and plain and tuple(source.sizes()) == tuple(target.sizes()):
        return elementwise(ctx, [target, source], value, "none")
    if isinstance(source, TInfo):
        ctx.pin_all(source, f"{ctx.op_label(node)} (writes into part of a tensor)")
    ctx.pin_all(target, f"{ctx.op_label(node)} (writes into part of a tensor)")
    return target.without_zero()


def _pin_dims(ctx: Context, node: fx.Node, info: TInfo, dims, why: str) -> TInfo:
    for d in dims:
        ctx.classes.pin(info.slots[norm_dim(int(d), info.ndim)], f"{ctx.op_label(node)} ({why})")
    return info.without_zero()


def call_function(ctx: Context, node: fx.Node, value: Any) -> Any:
    """The info of a call_function / call_method node."""
    name = op_name(node)
    args, kwargs = ctx.value(node.args), ctx.value(node.kwargs)
    first = ctx.info(node.args[0]) if node.args else None
    tensors = _tensor_infos(ctx, node)
    if not tensors:
        if name == "getitem" and isinstance(first, (list, tuple)):
            return _getitem(ctx, node, first, args[1], value)
        return unknown_info(value)
    if name in SHAPE_ATTRS or not isinstance(value, (torch.Tensor, tuple, list)):
        return None if not isinstance(value, torch.Tensor) else unknown_info(value)
    if name == "getitem":
        return _getitem(ctx, node, first, args[1], value)
    if name in FRESH:
        return unknown_info(value)
    if name == "scaled_dot_product_attention":
        return attention.scaled_dot_product(ctx, node, value)
    if name == "shifted_window_attention":
        return attention.window_attention(ctx, node, value)
    if name == "setitem":
        return _setitem(ctx, node, first, value)
    if not isinstance(first, TInfo):
        if name in ("cat", "concat", "concatenate", "stack") and isinstance(first, (list, tuple)):
            pieces = [(i, v) for i, v in zip(first, args[0])  # torch skips 1-d empty tensors in cat
                      if not (isinstance(v, torch.Tensor) and v.dim() == 1 and v.shape[0] == 0 and value.dim() > 1)]
            infos = [i for i, _ in pieces]
            if infos and all(isinstance(i, TInfo) for i in infos):
                dim = _arg(args, kwargs, 1, "dim", 0)
                if name == "stack":
                    infos = [shapes.reshape(ctx, node, i, v.unsqueeze(dim).shape) for i, v in pieces]
                return shapes.cat(ctx, infos, dim)
        if name in SUMS and isinstance(ctx.info(node.args[1]) if len(node.args) > 1 else None, TInfo):
            operands = [ctx.info(a) if isinstance(a, fx.Node) else a for a in node.args[:2]]
            return elementwise(ctx, operands, value, SUMS[name])
        return ctx.barrier(node, value)
    if name in KEEP_ZERO:
        return first
    if name in ("mT", "mH"):
        return shapes.transpose(first, -2, -1)
    if name == "T":
        return shapes.permute(first, list(range(first.ndim))[::-1])
    if name in NO_ZERO:
        low = _arg(args, kwargs, 1, "min")
        high = _arg(args, kwargs, 2, "max")
        if name in ("clamp", "clamp_", "clip") and (low is None or low <= 0) and (high is None or high >= 0) \
                and not isinstance(low, torch.Tensor) and not isinstance(high, torch.Tensor):
            return first
        return first.without_zero()
    if name in SUMS or name == "rsub":
        operands = [ctx.info(a) if isinstance(a, fx.Node) else a for a in node.args[:2]]
        operands = [o if o is not None else ctx.value(a) for o, a in zip(operands, node.args[:2])]
        return elementwise(ctx, operands, value, SUMS.get(name, "and"))
    if name in ("where", "masked_fill"):
        operands = [ctx.info(a) if isinstance(a, fx.Node) else a for a in node.args]
        return elementwise(ctx, [o for o in operands if isinstance(o, TInfo)], value, "none")
    if name in POOLS:
        out = channelwise(first, value[0] if isinstance(value, tuple) else value)
        return (out, out.without_zero()) if isinstance(value, tuple) else out
    if name in VIEWS:
        return shapes.reshape(ctx, node, first, value.shape)
    if name == "permute":
        order = kwargs.get("dims") or (args[1] if isinstance(args[1], (list, tuple)) else args[1:])
        return shapes.permute(first, order)
    if name in ("transpose", "swapaxes", "swapdims"):
        return shapes.transpose(first, int(_arg(args, kwargs, 1, "dim0")), int(_arg(args, kwargs, 2, "dim1")))
    if name == "t":
        return shapes.transpose(first, 0, 1) if first.ndim == 2 else first
    if name in ("chunk", "split", "tensor_split"):
        dim = _arg(args, kwargs, 2, "dim", 0)
        sizes = [piece.shape[norm_dim(dim, first.ndim)] for piece in value]
        return shapes.split(first, sizes, dim)
    if name == "unbind":
        dim = norm_dim(_arg(args, kwargs, 1, "dim", 0), first.ndim)
        ctx.classes.pin(first.slots[dim], f"{ctx.op_label(node)} (unbinds channels)")
        return tuple(first.select(dim, i) for i in range(len(value)))
    if name == "repeat_interleave" and isinstance(_arg(args, kwargs, 1, "repeats"), int):
        dim = _arg(args, kwargs, 2, "dim")
        if dim is not None:
            dim, repeats = norm_dim(int(dim), first.ndim), int(_arg(args, kwargs, 1, "repeats"))
            slots, zeros = list(first.slots), list(first.zero)
            slots[dim], zeros[dim] = np.repeat(first.slots[dim], repeats), np.repeat(first.zero[dim], repeats)
            return TInfo(slots, zeros)
    if name in ("expand", "expand_as", "broadcast_to"):
        out = elementwise(ctx, [first], value, "first")
        return out
    if name in ("matmul", "bmm"):
        second = ctx.info(node.args[1])
        if isinstance(second, TInfo):
            return _matmul(ctx, node, first, second, value)
    if name in REDUCTIONS:
        return _reduction(ctx, node, name, first, args, kwargs, value)
    if name in ("softmax", "log_softmax", "normalize", "cumsum", "cumprod", "flip", "roll"):
        dim = _arg(args, kwargs, 1, "dim", -1 if name == "normalize" else None)
        if dim is None and name in ("flip", "roll"):
            dim = _arg(args, kwargs, 1 if name == "flip" else 2, "dims")
        if dim is not None:
            dims = dim if isinstance(dim, (list, tuple)) else [dim]
            return _pin_dims(ctx, node, first, dims, "mixes channels")
    if name == "pad":
        return _pad(ctx, node, first, _arg(args, kwargs, 1, "pad"), value)
    if name == "layer_norm":
        return norms.functional_layer_norm(ctx, node, first, args, kwargs)
    if name in ("group_norm", "instance_norm", "batch_norm", "local_response_norm"):
        return _pin_dims(ctx, node, first, [1], "normalizes over channels")
    return ctx.barrier(node, value)
