"""What the engine knows about one tensor: per dimension, the class slot of every index and
whether that index holds an exact zero (in the masked model) across the whole slab."""
from __future__ import annotations

import attrs
import numpy as np
import torch

from nncore.speedup.groups import PIN


@attrs.define
class TInfo:
    """``slots[d][i]``: the slot of index ``i`` of dimension ``d``; ``zero[d][i]``: that slab is zero."""

    slots: list
    zero: list
    grid: tuple | None = None  # (dims, bool array): exact zeros over several dims (attention qkv)

    @property
    def ndim(self) -> int:
        return len(self.slots)

    def sizes(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.slots)

    def copy(self) -> TInfo:
        return TInfo(list(self.slots), list(self.zero), self.grid)

    def select(self, dim: int, index: int) -> TInfo:
        """The info after indexing ``dim`` with one integer (the dimension disappears)."""
        slots = self.slots[:dim] + self.slots[dim + 1:]
        zero = self.zero[:dim] + self.zero[dim + 1:]
        grid = None
        if self.grid is not None:
            dims, values = self.grid
            if dim in dims:
                values = np.take(values, index, axis=dims.index(dim))
                dims = tuple(d for d in dims if d != dim)
            dims = tuple(d - 1 if d > dim else d for d in dims)
            for k, d in enumerate(dims):
                others = tuple(a for a in range(len(dims)) if a != k)
                zero[d] = zero[d] | (values.all(axis=others) if others else values)
            if len(dims) > 1:
                grid = (dims, values)
        return TInfo(slots, zero, grid)

    def without_zero(self) -> TInfo:
        return TInfo(list(self.slots), [np.zeros(len(s), dtype=bool) for s in self.slots])


def pinned_vector(size: int) -> np.ndarray:
    return np.full(size, PIN, dtype=np.int64)


def no_zero(size: int) -> np.ndarray:
    return np.zeros(size, dtype=bool)


def pinned_info(shape) -> TInfo:
    """A tensor nothing can be removed from (inputs, constants, outputs of unknown ops)."""
    return TInfo([pinned_vector(n) for n in shape], [no_zero(n) for n in shape])


def zero_slabs(value: torch.Tensor, dim: int) -> np.ndarray:
    """For each index along ``dim``: is the whole slab exactly zero? (``value`` holds no negative
    entries: a 0/1 mask.) Summed by matrix-vector products over a view: no copy of ``value``."""
    if value.dim() == 0:
        return np.zeros(0, dtype=bool)
    n = value.shape[dim]
    if value.numel() == 0:
        return np.ones(n, dtype=bool)  # an empty slab holds nothing but zeros
    value = value.detach().to(torch.float32)
    outer = int(np.prod(value.shape[:dim], dtype=np.int64))
    flat = value.reshape(outer, -1)
    if outer > 1:
        flat = (flat.new_ones(outer) @ flat).view(n, -1)
    else:
        flat = flat.view(n, -1)
    return (flat @ flat.new_ones(flat.shape[1]) == 0).cpu().numpy()


def norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim
