"""A forward pass that computes shapes, not products: what capture and the post-shrink check need.

The speedup analysis reads the shapes of one forward pass, never its values, yet a real forward of a
transformer spends nearly all its time in the matrix products of its linear layers (BERT-base on a
128-token input: ~0.45 s of ~0.5 s on one core). Inside :class:`DryRun`, ``F.linear``, ``torch.addmm``
(``nn.Linear``, Hugging Face ``Conv1D``), ``matmul``/``@``/``bmm`` of matrices (eager attention),
``F.conv1d/2d/3d`` and ``F.scaled_dot_product_attention`` return zeros of their result's shape instead of computing it, when their operands fit; when they do
not, torch runs the op and raises its own error. Everything else runs for real.

Zeros are not the real values, so the pass must not let them steer the code. Every tensor that
depends on a skipped product is *tainted* (by storage, so views and in-place writes are covered),
and the pass raises :class:`ValueDependent` as soon as the code could observe a tainted value:
a Python value read from one (``bool(x)``, ``x.item()``, ``x.tolist()``, ``torch.equal``), a tainted
integer or boolean tensor (indices, masks, sizes: routing and data-dependent shapes start there), or
an op whose output shape depends on values (``nonzero``, ``unique``, ...). Callers then run the real
forward pass instead, so a model whose control flow depends on its activations (mixture-of-experts
routing, for instance) is captured as before, only not faster.

(The ``meta`` device and ``FakeTensorMode`` were measured as alternatives: on torch 2.13 the first
``meta`` attention op of a process costs ~2 s of lazy initialisation, and a ``FakeTensorMode``
forward of BERT-base costs as much as the real one.)
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from nncore.speedup.tensors import flat_tensors

# functions and properties that read a tensor's metadata, not its values
_METADATA = frozenset({
    "size", "dim", "ndimension", "numel", "nelement", "stride", "__len__", "__get__", "is_contiguous",
    "is_floating_point", "is_complex", "element_size", "get_device", "data_ptr", "storage_offset",
    "untyped_storage", "dim_order", "__hash__", "is_inference", "_is_view", "is_same_size", "__set__",
    "__setitem__", "has_names", "is_pinned", "is_shared", "is_signed", "type",
})
# ops whose output shape depends on their input's values
_VALUE_SHAPED = frozenset({
    "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "bincount", "repeat_interleave",
    "one_hot", "histogram", "nonzero_static",
})

# normalizations that update running statistics in training mode: their flag (sixth argument) and its default
_STATISTICS = {"batch_norm": ("training", False), "instance_norm": ("use_input_stats", True)}


class ValueDependent(RuntimeError):
    """The forward pass read a value that a skipped product would have set (see the module docstring)."""


def _key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def _linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor | None:
    """Zeros shaped like ``F.linear``'s result, or ``None`` (torch then runs it, and raises its own
    error) unless the operands fit."""
    if input.dim() < 1 or weight.dim() != 2 or input.shape[-1] != weight.shape[1] or not _alike(input, weight, bias):
        return None
    shape = (*input.shape[:-1], weight.shape[0])
    return _zeros(shape, input) if bias is None or _broadcasts(bias, shape) else None


def _addmm(bias: torch.Tensor, mat1: torch.Tensor, mat2: torch.Tensor, **kwargs: Any) -> torch.Tensor | None:
    """``torch.addmm`` (Hugging Face ``Conv1D``), as :func:`_linear`."""
    if mat1.dim() != 2 or mat2.dim() != 2 or mat1.shape[1] != mat2.shape[0] or set(kwargs) - {"beta", "alpha"} \
            or not _alike(mat1, mat2, bias):
        return None
    shape = (mat1.shape[0], mat2.shape[1])
    return _zeros(shape, mat1) if _broadcasts(bias, shape) else None


def _matmul(input: torch.Tensor, other: torch.Tensor, **kwargs: Any) -> torch.Tensor | None:
    """``torch.matmul`` / ``@`` / ``bmm`` of operands with two or more dimensions (batch dimensions
    broadcast), as :func:`_linear`; vector operands are left to torch."""
    if kwargs or input.dim() < 2 or other.dim() < 2 or input.shape[-1] != other.shape[-2] or not _alike(input, other):
        return None
    try:
        batch = torch.broadcast_shapes(tuple(input.shape[:-2]), tuple(other.shape[:-2]))
    except RuntimeError:
        return None
    return _zeros((*batch, input.shape[-2], other.shape[-1]), input)


def _bmm(input: torch.Tensor, mat2: torch.Tensor, **kwargs: Any) -> torch.Tensor | None:
    """``torch.bmm`` (no broadcasting), as :func:`_linear`."""
    if input.dim() != 3 or mat2.dim() != 3 or input.shape[0] != mat2.shape[0]:
        return None
    return _matmul(input, mat2, **kwargs)


def _attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
               dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
               enable_gqa: bool = False) -> torch.Tensor | None:
    """``F.scaled_dot_product_attention``, as :func:`_linear` (grouped-query heads included)."""
    if min(query.dim(), key.dim(), value.dim()) < 2 or not _alike(query, key, value) \
            or query.shape[-1] != key.shape[-1] or key.shape[-2] != value.shape[-2] or key.dim() != value.dim() \
            or (is_causal and attn_mask is not None):
        return None
    batch, kv_batch = tuple(query.shape[:-2]), tuple(key.shape[:-2])
    if kv_batch != tuple(value.shape[:-2]):
        return None
    if batch != kv_batch and not (enable_gqa and len(batch) == len(kv_batch) >= 1 and batch[:-1] == kv_batch[:-1]
                                  and kv_batch[-1] and batch[-1] % kv_batch[-1] == 0):
        return None
    if attn_mask is not None and (attn_mask.dtype not in (torch.bool, query.dtype)
                                  or not _broadcasts(attn_mask, (*batch, query.shape[-2], key.shape[-2]))):
        return None
    return _zeros((*batch, query.shape[-2], value.shape[-1]), query)


def _conv(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: Any = 1,
          padding: Any = 0, dilation: Any = 1, groups: int = 1) -> torch.Tensor | None:
    """``F.conv1d/2d/3d``, as :func:`_linear`."""
    n = weight.dim() - 2
    if n < 1 or input.dim() != n + 2 or not _alike(input, weight, bias) or groups < 1 \
            or input.shape[1] != weight.shape[1] * groups or weight.shape[0] % groups \
            or (bias is not None and tuple(bias.shape) != (weight.shape[0],)):
        return None
    stride, dilation = _per_dim(stride, n), _per_dim(dilation, n)
    if stride is None or dilation is None:
        return None
    if padding == "valid":
        padding = 0
    if padding == "same":
        if any(s != 1 for s in stride):
            return None
        sizes = tuple(input.shape[2:])
    else:
        padding = _per_dim(padding, n)
        if padding is None:
            return None
        sizes = tuple((size + 2 * p - d * (k - 1) - 1) // s + 1 for size, p, d, k, s in
                      zip(input.shape[2:], padding, dilation, weight.shape[2:], stride))
    if any(size < 1 for size in sizes):
        return None
    return _zeros((input.shape[0], weight.shape[0], *sizes), input, _conv_memory_format(input, weight))


def _per_dim(value: Any, n: int) -> tuple | None:
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,) * n
    return values if len(values) == n and all(isinstance(v, int) and v >= 0 for v in values) else None


def _alike(first: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Floating operands of one dtype and device, outside autocast (which would change the result's dtype)."""
    return first.is_floating_point() and not torch.is_autocast_enabled(first.device.type) and all(
        o is None or (o.dtype == first.dtype and o.device == first.device) for o in others)


def _broadcasts(tensor: torch.Tensor, shape: tuple) -> bool:
    try:
        return torch.broadcast_shapes(tuple(tensor.shape), shape) == tuple(shape)
    except RuntimeError:
        return False


def _zeros(shape: tuple, like: torch.Tensor,
           memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    return torch.zeros(shape, dtype=like.dtype, device=like.device).contiguous(memory_format=memory_format)


def _conv_memory_format(input: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """The layout torch gives a convolution's result: channels-last when an operand is."""
    channels_last = {4: torch.channels_last, 5: torch.channels_last_3d}.get(input.dim())
    if channels_last is not None and any(t.is_contiguous(memory_format=channels_last) and not t.is_contiguous()
                                         for t in (input, weight)):
        return channels_last
    return torch.contiguous_format


def _updates_statistics(name: str, args: tuple, kwargs: dict) -> bool:
    flag, default = _STATISTICS[name]
    running_mean = kwargs.get("running_mean", args[1] if len(args) > 1 else None)
    return running_mean is not None and bool(kwargs.get(flag, args[5] if len(args) > 5 else default))


_SKIPPED = {F.linear: _linear, torch._C._nn.linear: _linear, torch.addmm: _addmm, torch.matmul: _matmul,
            torch.Tensor.__matmul__: _matmul, torch.Tensor.matmul: _matmul, torch.bmm: _bmm, torch.Tensor.bmm: _bmm,
            F.scaled_dot_product_attention: _attention, F.conv1d: _conv, F.conv2d: _conv, F.conv3d: _conv}


class DryRun(TorchFunctionMode):
    """Within this mode (and ``torch.no_grad``), products are skipped; see the module docstring.

    Raises :class:`ValueDependent` when the code reads a value they would have set.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tainted: set[int] = set()
        self.skipped = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        skip = _SKIPPED.get(func)
        if skip is not None:
            result = skip(*args, **kwargs)
            if result is not None:
                self.skipped += 1
                self.tainted.add(_key(result))
                return result
        inputs = flat_tensors(args) + flat_tensors(kwargs)
        tainted = any(t.numel() and _key(t) in self.tainted for t in inputs)
        name = getattr(func, "__name__", "")
        if tainted and name in _VALUE_SHAPED:
            raise ValueDependent(f"{name} of a value that depends on a skipped product")
        if tainted and name in _STATISTICS and _updates_statistics(name, args, kwargs):
            raise ValueDependent(f"{name} would update running statistics with values that depend on a skipped "
                                 "product")
        result = func(*args, **kwargs)
        if not tainted:
            return result
        outputs = flat_tensors(result)
        if name in ("__setitem__", "__set__"):
            outputs = [args[0]]
        elif not outputs:
            if name not in _METADATA:
                raise ValueDependent(f"{name or func} reads a value that depends on a skipped product")
            return result
        for tensor in outputs:
            if not (tensor.is_floating_point() or tensor.is_complex()):
                raise ValueDependent(f"{name or func} makes a {tensor.dtype} tensor from values that depend on a "
                                     "skipped product (indices, masks or sizes)")
            if tensor.numel():
                self.tainted.add(_key(tensor))
        return result


def check_shapes(model: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    """Run ``model`` once on ``args``/``kwargs`` for its shape errors (a dry run where possible)."""
    with torch.no_grad():
        try:
            with DryRun():
                model(*args, **kwargs)
            return
        except Exception:  # noqa: BLE001 - a value read, or a failure on zeros: the real pass decides
            pass
        model(*args, **kwargs)
