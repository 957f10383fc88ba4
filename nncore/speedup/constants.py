"""Exact constants: which slabs of each tensor hold one known value in the masked model.

A masked filter gives a zero channel; the BatchNorm after it shifts the zero to its bias, a ReLU
maps that constant ``c`` to ``relu(c)``, pooling keeps it. Such a channel carries no information:
a layer that mixes channels sees a fixed offset, which :mod:`nncore.speedup.fold` moves into the
layer's bias so the channel can go. Next to the zero flags of :class:`~nncore.speedup.info.TInfo`,
this module computes for every tensor of the graph, per dimension ``d``, a float vector
``consts[d]``: ``consts[d][i] = c`` says that index ``i`` of dimension ``d`` equals ``c`` in the
whole slab, for every input of the dummy input's shape (NaN: not known to be constant).

Constants start from the proven zeros (a zero is the constant 0) and from masked filters (their
output is the bias). Only the ops listed here carry them further; any other op (and parameters,
and the model inputs) yields nothing but its proven zeros, so an op the engine does not know can
never make a channel look constant:

* element-wise functions and activation modules: ``c -> f(c)``, computed by the op itself;
* BatchNorm in eval mode with running statistics and PReLU: the per-channel map of the module;
* element-wise arithmetic (add, mul, maximum, ...): a slab is constant when every operand's slab
  is, with broadcasting;
* concatenation; max and adaptive pooling, and average pooling that averages real values only
  (no padding, or ``count_include_pad=False``): a constant channel stays that constant;
* depthwise convolutions: ``c * sum(w) + b``, unless zero padding shows zeros at the border;
* permutes and transposes: the dimensions' constants are reordered;
* other shape ops (view, split, indexing, expand), resizing, padding, other pooling and
  reductions over other dimensions: the op itself is run once on a probe that holds the known
  constants and NaN elsewhere (these ops carry a NaN to every output it reaches), and a slab is
  constant when the probe's output slab holds one finite value.

Each node's constants are cached across the analysis passes of one model (see :func:`track`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from nncore.speedup.functions import KEEP_ZERO, NO_ZERO, POOLS, VIEWS
from nncore.speedup.graph import op_name
from nncore.speedup.info import TInfo

Consts = list  # per dimension: float64 vector, NaN where not constant

CASTS = {"contiguous", "clone", "detach", "identity", "requires_grad_", "cpu", "cuda", "to", "type", "data", "real",
         "type_as", "float", "half", "double", "bfloat16"}
DROPOUTS = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"}
UNARY = (KEEP_ZERO | NO_ZERO) - CASTS - DROPOUTS - {"prelu", "stochastic_depth"}
BINARY = {"add", "sub", "rsub", "mul", "div", "true_divide", "maximum", "minimum", "floordiv", "pow"}
PERMUTES = {"permute", "transpose", "swapaxes", "swapdims", "t"}
PROBED = (POOLS | {"stack",
                   "chunk", "split", "tensor_split", "unbind", "getitem", "expand", "expand_as", "broadcast_to",
                   "flip", "roll", "pad", "mean", "sum", "amax", "amin", "max", "min"})
ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.ELU, nn.SELU, nn.CELU, nn.Tanh,
    nn.Hardtanh, nn.Identity, nn.Softshrink, nn.Hardshrink, nn.Tanhshrink, nn.Sigmoid, nn.Hardsigmoid,
    nn.Softplus, nn.LogSigmoid)
DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
PROBED_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.Upsample, nn.UpsamplingNearest2d,
                  nn.UpsamplingBilinear2d, nn.LPPool1d, nn.LPPool2d, nn.Flatten, nn.Unflatten)
CHANNEL_POOLS = {"max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "adaptive_avg_pool1d",
                 "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
                 "adaptive_max_pool3d"}
CHANNEL_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                        nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
AVG_POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def unknown(n: int) -> np.ndarray:
    return np.full(n, np.nan)


def stock(module: nn.Module, types: tuple) -> type | None:
    """The class of ``types`` that ``module`` is, when its subclass (if any) keeps that class's
    ``forward`` (a subclass that pads or scales in its forward is not understood)."""
    for klass in types:
        if isinstance(module, klass) and type(module).forward is klass.forward:
            return klass
    return None


def consts_of(ctx, arg: Any) -> Any:
    """The constants of a node argument (recursing into lists and tuples); ``None`` if unknown."""
    if isinstance(arg, fx.Node):
        return ctx.consts.get(arg)
    if isinstance(arg, (list, tuple)):
        return type(arg)(consts_of(ctx, a) for a in arg)
    return None


def track(ctx, node: fx.Node, value: Any, info: Any) -> Any:
    """Record the constants of ``node``'s output in ``ctx.consts`` (what its op carries, plus the
    proven zeros of ``info``) and return ``info`` with the slabs whose constant is 0 flagged zero.

    Cached across the analysis passes of one model while the inputs' constants and the zeros
    are the same objects and values."""
    key = (tuple(id(ctx.consts.get(a)) for a in node.all_input_nodes), _zero_key(info))
    cached = ctx.cache.get(("consts", node))
    if cached is None or cached[0] != key:
        with torch.no_grad():
            found = _transfer(ctx, node, value)
        found = _with_zeros(found, value, info)
        cached = ctx.cache[("consts", node)] = (key, found, _new_zeros(info, found))
    ctx.consts[node] = cached[1]
    return _add_zeros(info, cached[2])


def _new_zeros(info: Any, consts: Any) -> Any:
    """Per dimension, the slabs whose constant is 0 but that ``info`` does not flag as zero."""
    if isinstance(info, (list, tuple)) and isinstance(consts, (list, tuple)) and len(info) == len(consts):
        found = tuple(_new_zeros(i, c) for i, c in zip(info, consts))
        return found if any(f is not None for f in found) else None
    if not isinstance(info, TInfo) or not isinstance(consts, list) or len(consts) != info.ndim:
        return None
    found = [(c == 0) & ~z if len(z) == len(c) else np.zeros(len(z), bool) for z, c in zip(info.zero, consts)]
    return found if any(f.any() for f in found) else None


def _add_zeros(info: Any, extra: Any) -> Any:
    if extra is None:
        return info
    if isinstance(extra, tuple):
        return type(info)(_add_zeros(i, e) for i, e in zip(info, extra))
    return TInfo(list(info.slots), [z | e for z, e in zip(info.zero, extra)], info.grid)


def _zero_key(info: Any) -> Any:
    if isinstance(info, TInfo):
        return tuple(np.packbits(z).tobytes() + len(z).to_bytes(4, "little") for z in info.zero)
    if isinstance(info, (list, tuple)):
        return tuple(_zero_key(i) for i in info)
    return None


# -- representation --------------------------------------------------------------------------
def _floating(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _with_zeros(consts: Any, value: Any, info: Any) -> Any:
    if isinstance(value, (list, tuple)):
        consts = consts if isinstance(consts, (list, tuple)) and len(consts) == len(value) else [None] * len(value)
        infos = info if isinstance(info, (list, tuple)) and len(info) == len(value) else [None] * len(value)
        return tuple(_with_zeros(c, v, i) for c, v, i in zip(consts, value, infos))
    if not _floating(value):
        return None
    shape = tuple(value.shape)
    if consts is None or len(consts) != len(shape) or any(len(c) != n for c, n in zip(consts, shape)):
        consts = [None] * len(shape)
    out = [c if c is not None else unknown(n) for c, n in zip(consts, shape)]
    if isinstance(info, TInfo) and tuple(info.sizes()) == shape:
        out = [np.where(zero, 0.0, c) for zero, c in zip(info.zero, out)]
    return out if any(bool((~np.isnan(c)).any()) for c in out) else None


def known(consts: Any) -> bool:
    return consts is not None and any(bool((~np.isnan(c)).any()) for c in consts)


def dense(consts: Consts | None, shape: tuple, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    """A probe: the known constants where they are, NaN elsewhere."""
    out = torch.full(shape, float("nan"), dtype=dtype, device=device)
    for d, c in enumerate(consts or []):
        if np.isnan(c).all():
            continue
        view = [1] * len(shape)
        view[d] = shape[d]
        out = torch.where(torch.isnan(out), torch.as_tensor(c, dtype=dtype, device=device).view(view), out)
    return out


def extract(tensor: torch.Tensor) -> Consts:
    """Per dimension and index: the value of the slab when it holds one finite value, else NaN."""
    out = []
    for d, n in enumerate(tensor.shape):
        if tensor.numel() == 0:
            out.append(unknown(n))
            continue
        others = [i for i in range(tensor.dim()) if i != d]  # reduced in place: no moved copy
        high = tensor.amax(dim=others) if others else tensor  # NaN propagates: a NaN slab is not constant
        low = tensor.amin(dim=others) if others else tensor
        same = (high == low) & torch.isfinite(high)
        out.append(np.where(same.cpu().numpy(), high.double().cpu().numpy(), np.nan))
    return out


def global_const(consts: Consts | None, shape: tuple) -> float:
    """The value of the whole tensor when it is one constant (NaN otherwise)."""
    for c in consts or []:
        if len(c) and not np.isnan(c).any() and (c == c[0]).all():
            return float(c[0])
    if consts and int(np.prod(shape)) == 1:
        values = [c[0] for c in consts if len(c) and not np.isnan(c[0])]
        return float(values[0]) if values else float("nan")
    return float("nan")


def device_of(module: nn.Module) -> torch.device | None:
    """Where a module's parameters live (its probes are made there)."""
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    return None if tensor is None else tensor.device


class _Refused(Exception):
    """An op that does not accept a probe (nothing is known of its output but the zeros)."""


def _run(function, *args, **kwargs) -> Any:
    """Run an op of the model on probes; ``None`` when the op refuses them."""
    try:
        return function(*args, **kwargs)
    except Exception:
        return None


def _call(node: fx.Node, args: tuple, kwargs: dict) -> Any:
    """Call the function or method of ``node`` on ``args`` (probes); ``None`` if it refuses them."""
    if node.op == "call_method":
        method = getattr(args[0], str(node.target), None)
        return None if method is None else _run(method, *args[1:], **kwargs)
    return _run(node.target, *args, **kwargs)


# -- the ops --------------------------------------------------------------------------------
def _transfer(ctx, node: fx.Node, value: Any) -> Any:
    if node.op == "call_module":
        return _module(ctx, node, ctx.capture.get_submodule(str(node.target)), value)
    if node.op not in ("call_function", "call_method") or not node.args:
        return None  # model inputs, parameters and buffers: nothing is known to be constant
    name = op_name(node)
    source = node.args[0]
    if name == "getitem" and isinstance(source, fx.Node) and isinstance(ctx.values.get(source), (list, tuple)):
        items, index = ctx.consts.get(source), ctx.value(node.args[1])
        return items[index] if isinstance(items, (list, tuple)) and isinstance(index, int) else None
    if name in BINARY and (_tensor_operands(ctx, node) > 1 or name != "pow"):
        return _binary(ctx, node, value)
    first = consts_of(ctx, source)
    if name in ("cat", "concat", "concatenate") and isinstance(source, (list, tuple)):
        return _cat(ctx, source, ctx.value(node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)), value)
    if not _floating(ctx.values.get(source) if isinstance(source, fx.Node) else None):
        return _probed(ctx, node, value, name) if name == "stack" else None
    if name in CASTS:
        return _unary(ctx, node, first, lambda probe: probe.to(value.dtype)) if _floating(value) else None
    if name in DROPOUTS or name == "stochastic_depth":
        position = 3 if name == "stochastic_depth" else 2
        training = node.kwargs.get("training", node.args[position] if len(node.args) > position else True)
        return first if ctx.value(training) is False else None
    if name in UNARY:
        rest, kwargs = tuple(ctx.value(node.args[1:])), ctx.value(node.kwargs)
        return _unary(ctx, node, first, lambda probe: _call(node, (probe,) + rest, kwargs))
    if name in CHANNEL_POOLS:
        return _channels_carried(first, value)
    if name in PERMUTES:
        order = _order(ctx, node, name, value.dim())
        if order is not None:
            return [first[d] for d in order] if known(first) and len(first) == len(order) else None
    if name in PROBED or name in VIEWS:
        return _probed(ctx, node, value, name)
    return None


def _order(ctx, node: fx.Node, name: str, ndim: int) -> list[int] | None:
    """Input dimension of each output dimension of a permute or transpose (``None``: not understood)."""
    args, kwargs = ctx.value(tuple(node.args)), ctx.value(dict(node.kwargs))
    order = list(range(ndim))
    try:
        if name == "permute":
            dims = kwargs.get("dims", args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:])
            order = [int(d) % ndim for d in dims]
        elif name == "t" and ndim == 2:
            order = [1, 0]
        elif name in ("transpose", "swapaxes", "swapdims"):
            a = int(args[1] if len(args) > 1 else kwargs["dim0"]) % ndim
            b = int(args[2] if len(args) > 2 else kwargs["dim1"]) % ndim
            order[a], order[b] = order[b], order[a]
    except (IndexError, KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return order if sorted(order) == list(range(ndim)) else None


def _pairs(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def zero_padding(conv: nn.Module) -> bool:
    """Does the convolution pad its input with zeros?"""
    if conv.padding_mode != "zeros":
        return False
    if isinstance(conv.padding, str):
        return conv.padding == "same" and any(d * (k - 1) for k, d in zip(conv.kernel_size, conv.dilation))
    return any(int(p) for p in conv.padding)


def _channels_carried(first: Consts | None, value: Any) -> Any:
    """Pooling that keeps batch and channels and only sees real input values in each window
    (max pooling pads with -inf): a constant channel stays that constant (up to rounding)."""
    tensor = value[0] if isinstance(value, (tuple, list)) else value
    if not known(first) or tensor.dim() < 2 or len(first[1]) != tensor.shape[1]:
        return None
    out = [unknown(n) for n in tensor.shape]
    out[1] = first[1]
    return (out, None) if isinstance(value, (tuple, list)) else out


def _tensor_operands(ctx, node: fx.Node) -> int:
    return sum(1 for a in list(node.args) + list(node.kwargs.values())
               if isinstance(a, fx.Node) and isinstance(ctx.values.get(a), torch.Tensor))


def _module(ctx, node: fx.Node, module: nn.Module, value: Any) -> Any:
    first = consts_of(ctx, node.args[0]) if node.args else None
    if stock(module, DROPOUT_MODULES):
        return first if not module.training else None
    if stock(module, ELEMENTWISE_MODULES):
        return _unary(ctx, node, first, module, device_of(module))
    if stock(module, CHANNEL_POOL_MODULES) or stock(module, AVG_POOL_MODULES) and module.divisor_override is None \
            and (not module.count_include_pad or not any(_pairs(module.padding))):
        return _channels_carried(first, value)
    if stock(module, PROBED_MODULES):
        return _probed(ctx, node, value, "module")
    if stock(module, BATCHNORMS):
        if module.training or not module.track_running_stats or module.running_mean is None:
            return None  # batch statistics: the output depends on the batch
        return _per_channel(first, value, module)
    if stock(module, (nn.PReLU,)):
        return _per_channel(first, value, module)
    if stock(module, CONVS + (nn.Linear,)):
        return _filters(ctx, node, module, value)
    return None


def _unary(ctx, node: fx.Node, first: Consts | None, function, device: torch.device | None = None) -> Consts | None:
    """Element-wise ``f``: every constant slab stays constant, with value ``f(c)``."""
    if not known(first) or _tensor_operands(ctx, node) != 1 and node.op != "call_module":
        return None
    dtype = ctx.values[node.args[0]].dtype
    flat = np.concatenate(first)
    keep = ~np.isnan(flat)
    probe = torch.as_tensor(np.where(keep, flat, 0.0), dtype=dtype, device=device)
    result = _run(function, probe)
    if not isinstance(result, torch.Tensor) or result.shape != probe.shape or not result.is_floating_point():
        return None
    mapped = np.where(keep, result.double().cpu().numpy(), np.nan)
    return np.split(mapped, np.cumsum([len(c) for c in first])[:-1])


def _per_channel(first: Consts | None, value: torch.Tensor, module: nn.Module) -> Consts | None:
    """A per-channel map on dimension 1 (BatchNorm with running statistics, PReLU)."""
    if not known(first) or value.dim() < 2:
        return None
    channels = first[1]
    keep = ~np.isnan(channels)
    shape = [1, len(channels)] + [1] * (value.dim() - 2)
    probe = torch.as_tensor(np.where(keep, channels, 0.0), dtype=value.dtype, device=device_of(module)).view(shape)
    out = [unknown(n) for n in value.shape]
    result = _run(module, probe)
    if not isinstance(result, torch.Tensor) or result.numel() != len(channels):
        return None
    out[1] = np.where(keep, result.reshape(-1).double().cpu().numpy(), np.nan)
    return out


def _filters(ctx, node: fx.Node, module: nn.Module, value: torch.Tensor) -> Consts | None:
    """Conv/Linear: a masked filter outputs its bias; a depthwise convolution also carries the
    constants of its input channels (each output channel reads one input channel)."""
    name = str(node.target)
    dim = value.dim() - 1 if isinstance(module, nn.Linear) else 1
    out = [unknown(n) for n in value.shape]
    if isinstance(module, CONVS) and module.groups == module.in_channels == module.out_channels:
        first = consts_of(ctx, node.args[0])
        if known(first) and len(first) == value.dim():
            weight = module.weight
            mask = ctx.weight_mask(name)
            if mask is not None:
                weight = weight * mask.to(device=weight.device, dtype=weight.dtype)
            # every output sees the constant through the whole kernel, unless zero padding shows zeros
            taps = weight.detach().double().reshape(len(weight), -1).sum(dim=1).cpu().numpy()
            bias = 0.0 if module.bias is None else module.bias.detach().double().cpu().numpy()
            carried = first[1] if not zero_padding(module) else np.where(first[1] == 0, 0.0, np.nan)
            out[1] = carried * taps + bias
    zero_filters = ctx.filter_zero.get(name)
    if zero_filters is not None and zero_filters.any():
        bias = np.zeros(len(zero_filters)) if module.bias is None else module.bias.detach().double().cpu().numpy()
        out[dim] = np.where(zero_filters, bias, out[dim])
    return out


def _binary(ctx, node: fx.Node, value: torch.Tensor) -> Consts | None:
    """Element-wise arithmetic with broadcasting: output slab ``i`` of dimension ``d`` is constant
    when every operand's slab is (an operand broadcast along ``d`` must be one constant)."""
    if not _floating(value):
        return None
    operands = []
    for arg in node.args:
        if isinstance(arg, fx.Node) and isinstance(ctx.values.get(arg), torch.Tensor):
            operands.append((ctx.consts.get(arg), tuple(ctx.values[arg].shape), ctx.values[arg].dtype))
        elif isinstance(arg, fx.Node) or isinstance(arg, (int, float, bool)):
            operands.append(ctx.value(arg))
        else:
            return None
    if not any(isinstance(o, tuple) and known(o[0]) for o in operands):
        return None
    kwargs = ctx.value(node.kwargs)
    if any(isinstance(v, torch.Tensor) for v in kwargs.values()):
        return None
    out = []
    for d, n in enumerate(value.shape):
        probes, keep = [], np.ones(n, dtype=bool)
        for operand in operands:
            if not isinstance(operand, tuple):
                probes.append(operand)
                continue
            consts, shape, dtype = operand
            od = d - (value.dim() - len(shape))
            if od >= 0 and shape[od] == n:
                vector = consts[od] if consts is not None else unknown(n)
            else:
                vector = np.full(n, global_const(consts, shape))
            keep &= ~np.isnan(vector)
            probes.append(torch.as_tensor(np.nan_to_num(vector), dtype=dtype))
        if not keep.any():
            out.append(unknown(n))
            continue
        result = _call(node, tuple(probes), kwargs)
        if not isinstance(result, (torch.Tensor, int, float)):
            return None
        result = torch.as_tensor(result).double().expand(n).numpy()
        out.append(np.where(keep & np.isfinite(result), result, np.nan))
    return out


def _cat(ctx, parts: list, dim: int, value: torch.Tensor) -> Consts | None:
    """Concatenation: the constants of the parts along ``dim``; across the other dimensions a
    slab is constant when it is in every part, with one value."""
    shapes = [tuple(ctx.values[p].shape) if isinstance(p, fx.Node) and _floating(ctx.values.get(p)) else None
              for p in parts]
    if not _floating(value) or not isinstance(dim, int) or any(shape is None or len(shape) != value.dim()
                                                               for shape in shapes):
        return None
    dim = dim % value.dim()
    consts = [ctx.consts.get(p) or [unknown(n) for n in shape] for p, shape in zip(parts, shapes)]
    out = []
    for d in range(value.dim()):
        if d == dim:
            out.append(np.concatenate([c[d] for c in consts]))
            continue
        first = consts[0][d]
        same = np.ones(len(first), dtype=bool)
        for c in consts[1:]:
            same &= c[d] == first
        out.append(np.where(same, first, np.nan))
    return out


def _probed(ctx, node: fx.Node, value: Any, name: str) -> Any:
    """Run a shape/pooling/reduction op on NaN-filled probes of its tensor inputs."""
    pending = list(node.args) + list(node.kwargs.values())
    while pending and not (isinstance(pending[-1], fx.Node) and known(ctx.consts.get(pending[-1]))):
        arg = pending.pop()
        if isinstance(arg, (list, tuple)):
            pending.extend(arg)
    if not pending:
        return None  # no input holds a known constant

    def probe(arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            real = ctx.values.get(arg)
            if isinstance(real, torch.Tensor):
                if not real.is_floating_point():
                    raise _Refused(f"{arg.name} is not a float tensor")
                return dense(ctx.consts.get(arg), tuple(real.shape), real.dtype)
            return ctx.value(arg)
        if isinstance(arg, (list, tuple)):
            return type(arg)(probe(a) for a in arg)
        if isinstance(arg, slice):
            return slice(probe(arg.start), probe(arg.stop), probe(arg.step))
        return arg

    try:
        args, kwargs = probe(tuple(node.args)), {k: probe(v) for k, v in node.kwargs.items()}
    except _Refused:
        return None
    if name in VIEWS or (name == "module" and isinstance(ctx.capture.get_submodule(str(node.target)),
                                                         (nn.Flatten, nn.Unflatten))):
        result = _run(args[0].reshape, value.shape)
    elif name in ("expand", "expand_as", "broadcast_to"):
        result = _run(args[0].expand, value.shape)
    elif name == "module":
        result = _run(ctx.capture.get_submodule(str(node.target)), *args, **kwargs)
    else:
        result = _call(node, args, kwargs)
    return _extract_like(result, value)


def _extract_like(result: Any, value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        if not isinstance(result, torch.Tensor) or result.shape != value.shape or not result.is_floating_point():
            return None
        return extract(result)
    if isinstance(value, (list, tuple)) and isinstance(result, (list, tuple)) and len(result) == len(value):
        return tuple(_extract_like(r, v) for r, v in zip(result, value))
    return None
