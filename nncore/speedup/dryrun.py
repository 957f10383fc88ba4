"""A forward pass that computes shapes, not products: what capture and the post-shrink check need.

The speedup analysis reads the shapes of one forward pass, never its values, yet a real forward of a
transformer spends nearly all its time in the matrix products of its linear layers (BERT-base on a
128-token input: ~0.45 s of ~0.5 s on one core). Inside :class:`DryRun`, ``F.linear`` and
``torch.addmm`` (``nn.Linear``, Hugging Face ``Conv1D``) check their operands exactly as torch does and
return zeros of the result's shape instead of computing it; everything else runs for real.

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


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def _shape_error(func_name: str, message: str) -> RuntimeError:
    return RuntimeError(f"{func_name}: {message}")


def _linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor | None:
    """Zeros shaped like ``F.linear``'s result after its checks; ``None`` for a case left to torch."""
    if input.dim() < 1 or weight.dim() != 2:
        return None
    if input.dtype != weight.dtype or input.device != weight.device:
        raise _shape_error("linear", f"expected input and weight to have the same dtype and device, got "
                                     f"{input.dtype}/{input.device} and {weight.dtype}/{weight.device}")
    if input.shape[-1] != weight.shape[1]:
        rows = input.numel() // max(input.shape[-1], 1)
        raise _shape_error("linear", f"mat1 and mat2 shapes cannot be multiplied ({rows}x{input.shape[-1]} and "
                                     f"{weight.shape[1]}x{weight.shape[0]})")
    shape = (*input.shape[:-1], weight.shape[0])
    if bias is not None:
        torch.broadcast_shapes(tuple(bias.shape), shape)
    return torch.zeros(shape, dtype=input.dtype, device=input.device)


def _addmm(bias: torch.Tensor, mat1: torch.Tensor, mat2: torch.Tensor, **kwargs: Any) -> torch.Tensor | None:
    if mat1.dim() != 2 or mat2.dim() != 2 or set(kwargs) - {"beta", "alpha"}:
        return None
    if mat1.shape[1] != mat2.shape[0]:
        raise _shape_error("addmm", f"mat1 and mat2 shapes cannot be multiplied ({mat1.shape[0]}x{mat1.shape[1]} "
                                    f"and {mat2.shape[0]}x{mat2.shape[1]})")
    if len({mat1.dtype, mat2.dtype, bias.dtype}) > 1:
        raise _shape_error("addmm", f"expected the operands to have one dtype, got {bias.dtype}, {mat1.dtype}, "
                                    f"{mat2.dtype}")
    shape = (mat1.shape[0], mat2.shape[1])
    torch.broadcast_shapes(tuple(bias.shape), shape)
    return torch.zeros(shape, dtype=mat1.dtype, device=mat1.device)


def _updates_statistics(name: str, args: tuple, kwargs: dict) -> bool:
    flag, default = _STATISTICS[name]
    running_mean = kwargs.get("running_mean", args[1] if len(args) > 1 else None)
    return running_mean is not None and bool(kwargs.get(flag, args[5] if len(args) > 5 else default))


_SKIPPED = {F.linear: _linear, torch._C._nn.linear: _linear, torch.addmm: _addmm}


class DryRun(TorchFunctionMode):
    """Within this mode (and ``torch.no_grad``), linear products are skipped; see the module docstring.

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
        inputs = _tensors(args) + _tensors(kwargs)
        tainted = any(t.numel() and _key(t) in self.tainted for t in inputs)
        result = func(*args, **kwargs)
        if not tainted:
            return result
        name = getattr(func, "__name__", "")
        if name in _VALUE_SHAPED:
            raise ValueDependent(f"{name} of a value that depends on a skipped product")
        if name in _STATISTICS and _updates_statistics(name, args, kwargs):
            raise ValueDependent(f"{name} would update running statistics with values that depend on a skipped "
                                 "product")
        outputs = _tensors(result)
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
