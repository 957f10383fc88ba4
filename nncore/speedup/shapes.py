"""Channel bookkeeping through shape operations: view/reshape/flatten, permute, cat, split.

A ``view`` that merges dimensions keeps the classes of the one channel dimension inside them.
A ``view`` that splits a channel dimension (heads of attention, groups of a channel shuffle)
must keep the result rectangular, so the classes are tied along one of the new dimensions,
the *carrier*: whole heads, or the same index in every group. Which one is chosen per split
(``ctx.choose``) by trying each and keeping the one that removes most.
"""
from __future__ import annotations

import numpy as np

from nncore.speedup.groups import PIN
from nncore.speedup.info import TInfo, no_zero, norm_dim, pinned_vector


def _merge(ctx, node, info: TInfo, dims: list[int]):
    if len(dims) == 1:
        return info.slots[dims[0]], info.zero[dims[0]]
    sizes = [len(info.slots[d]) for d in dims]
    tracked = [k for k, d in enumerate(dims) if np.any(info.slots[d] != PIN)]
    flat_slots = np.full(int(np.prod(sizes)), PIN, dtype=np.int64)
    if tracked:
        carrier = tracked[0]
        for k in tracked[1:]:
            ctx.classes.pin(info.slots[dims[k]], f"{ctx.op_label(node)} (merges two channel dimensions)")
        shape = [1] * len(dims)
        shape[carrier] = sizes[carrier]
        flat_slots = np.broadcast_to(info.slots[dims[carrier]].reshape(shape), sizes).ravel().copy()
    zero = np.zeros(sizes, dtype=bool)
    for k, d in enumerate(dims):
        shape = [1] * len(dims)
        shape[k] = sizes[k]
        zero = zero | info.zero[d].reshape(shape)
    return flat_slots, zero.ravel()


def _split(ctx, node, key, flat_slots, flat_zero, sizes: list[int], out_dims: list[int]):
    if len(sizes) == 1:
        return [flat_slots], [flat_zero]
    zero_grid = flat_zero.reshape(sizes)
    zeros = [zero_grid.all(axis=tuple(a for a in range(len(sizes)) if a != k)) for k in range(len(sizes))]
    if np.all(flat_slots == PIN):
        return [pinned_vector(n) for n in sizes], zeros
    scores = [int(z.sum()) * (len(flat_zero) // n) for z, n in zip(zeros, sizes)]
    if max(scores) > 0:
        default = int(np.argmax(scores))
    else:  # the largest dimension, the innermost on a tie (head_dim, channels per group)
        default = max(range(len(sizes)), key=lambda k: (sizes[k], k))
    if ctx.preferred.get(node) in out_dims:  # attention heads (see attention.preferred_splits)
        default = out_dims.index(ctx.preferred[node])
    carrier = ctx.choose(node, key, len(sizes), default)
    rows = np.moveaxis(flat_slots.reshape(sizes), carrier, 0).reshape(sizes[carrier], -1)
    # every index of the carrier merges the slots it spans, all in one vectorized union
    ctx.classes.union_vectors(np.repeat(rows[:, :1], rows.shape[1] - 1, axis=1), rows[:, 1:])
    vector = ctx.classes.find_many(rows[:, 0])
    slots = [vector if k == carrier else pinned_vector(n) for k, n in enumerate(sizes)]
    return slots, zeros


def reshape(ctx, node, info: TInfo, out_shape) -> TInfo:
    """Classes of ``info`` after viewing it with ``out_shape`` (any view/reshape/flatten/squeeze)."""
    out_shape = list(out_shape)
    in_shape = list(info.sizes())
    ins = [d for d, n in enumerate(in_shape) if n != 1]
    outs = [d for d, n in enumerate(out_shape) if n != 1]
    slots = [pinned_vector(n) for n in out_shape]
    zero = [no_zero(n) for n in out_shape]
    grid = None
    i = j = 0
    key = 0
    while i < len(ins) and j < len(outs):
        group_in, group_out = [ins[i]], [outs[j]]
        p_in, p_out = in_shape[ins[i]], out_shape[outs[j]]
        i += 1
        j += 1
        while p_in != p_out:
            if p_in < p_out:
                group_in.append(ins[i])
                p_in *= in_shape[ins[i]]
                i += 1
            else:
                group_out.append(outs[j])
                p_out *= out_shape[outs[j]]
                j += 1
        flat_slots, flat_zero = _merge(ctx, node, info, group_in)
        new_slots, new_zero = _split(ctx, node, key, flat_slots, flat_zero, [out_shape[d] for d in group_out],
                                     group_out)
        key += 1
        for d, s, z in zip(group_out, new_slots, new_zero):
            slots[d], zero[d] = s, z
        if grid is None and len(group_out) > 1 and flat_zero.any():
            grid = (tuple(group_out), flat_zero.reshape([out_shape[d] for d in group_out]))
    return TInfo(slots, zero, grid)


def permute(info: TInfo, order) -> TInfo:
    order = [norm_dim(int(d), info.ndim) for d in order]
    grid = None
    if info.grid is not None:
        dims, values = info.grid
        grid = (tuple(order.index(d) for d in dims), values)
    return TInfo([info.slots[d] for d in order], [info.zero[d] for d in order], grid)


def transpose(info: TInfo, a: int, b: int) -> TInfo:
    order = list(range(info.ndim))
    a, b = norm_dim(a, info.ndim), norm_dim(b, info.ndim)
    order[a], order[b] = order[b], order[a]
    return permute(info, order)


def cat(ctx, infos: list[TInfo], dim: int) -> TInfo:
    base = infos[0]
    dim = norm_dim(dim, base.ndim)
    slots, zero = [], []
    for d in range(base.ndim):
        if d == dim:
            slots.append(np.concatenate([i.slots[d] for i in infos]))
            zero.append(np.concatenate([i.zero[d] for i in infos]))
        else:
            for other in infos[1:]:
                ctx.classes.union_vectors(base.slots[d], other.slots[d])
            slots.append(base.slots[d])
            z = base.zero[d]
            for other in infos[1:]:
                z = z & other.zero[d]
            zero.append(z)
    return TInfo(slots, zero)


def split(info: TInfo, sizes: list[int], dim: int) -> tuple[TInfo, ...]:
    dim = norm_dim(dim, info.ndim)
    out, start = [], 0
    for size in sizes:
        piece = info.copy()
        piece.slots[dim] = info.slots[dim][start:start + size]
        piece.zero[dim] = info.zero[dim][start:start + size]
        out.append(piece)
        start += size
    return tuple(out)
