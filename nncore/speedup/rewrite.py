"""After channels are removed: fix the literal sizes the graph carries (view shapes, split
sizes, slice bounds) so the shrunk tensors flow through the same code."""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from nncore.speedup.graph import op_name
from nncore.speedup.groups import Decision
from nncore.speedup.info import TInfo, norm_dim
from nncore.speedup.context import Context


def _kept(decision: Decision, slots: np.ndarray) -> np.ndarray:
    return ~decision.removed_mask(slots)


def _new_sizes(decision: Decision, info: TInfo) -> list[int]:
    return [int(_kept(decision, s).sum()) for s in info.slots]


def _rewrite_view(node: fx.Node, ctx: Context, decision: Decision) -> bool:
    out = ctx.infos.get(node)
    if not isinstance(out, TInfo):
        return False
    new = _new_sizes(decision, out)
    old = list(out.sizes())
    if new == old:
        return False
    packed = len(node.args) == 2 and isinstance(node.args[1], (list, tuple))
    shape = list(node.args[1]) if packed else list(node.args[1:])
    if "shape" in node.kwargs:
        shape, packed = list(node.kwargs["shape"]), None
    if len(shape) != len(new):
        return False
    for d, (before, after) in enumerate(zip(old, new)):
        if before != after and not (isinstance(shape[d], int) and shape[d] == -1):
            shape[d] = after
    if packed is None:
        node.kwargs = {**node.kwargs, "shape": tuple(shape)}
    elif packed:
        node.args = (node.args[0], tuple(shape))
    else:
        node.args = (node.args[0], *shape)
    return True


def _rewrite_split(node: fx.Node, ctx: Context, decision: Decision, name: str) -> bool:
    pieces = ctx.infos.get(node)
    source = ctx.info(node.args[0])
    if not isinstance(source, TInfo) or not isinstance(pieces, tuple):
        return False
    dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
    dim = norm_dim(int(dim), source.ndim)
    sizes = [int(_kept(decision, p.slots[dim]).sum()) for p in pieces]
    old = [len(p.slots[dim]) for p in pieces]
    if sizes == old:
        return False
    if name == "chunk" and len(set(sizes)) == 1 and len(pieces) == (node.args[1] if len(node.args) > 1 else node.kwargs.get("chunks")):
        return False
    args = {"dim": dim}
    if node.op == "call_method":
        node.target = "split"
    else:
        node.target = torch.split
    node.args = (node.args[0], sizes)
    node.kwargs = args
    return True


def _rewrite_getitem(node: fx.Node, ctx: Context, decision: Decision) -> bool:
    source = ctx.info(node.args[0])
    if not isinstance(source, TInfo):
        return False
    index = node.args[1]
    items = index if isinstance(index, tuple) else (index,)
    values = ctx.value(items)
    consumed = sum(1 for i in values if i is not None and i is not Ellipsis)
    new_items, d, changed = [], 0, False
    for item, value in zip(items, values):
        if value is None:
            new_items.append(item)
        elif value is Ellipsis:
            new_items.append(item)
            d += source.ndim - consumed
        else:
            kept = _kept(decision, source.slots[d])
            size = len(kept)
            if kept.all():
                new_items.append(item)
            elif isinstance(value, int):
                position = value % size
                new_items.append(int(kept[:position].sum()))
                changed = True
            else:
                start, stop, _ = value.indices(size)
                new_items.append(slice(int(kept[:start].sum()), int(kept[:max(stop, start)].sum()), None))
                changed = True
            d += 1
    if changed:
        node.args = (node.args[0], tuple(new_items) if isinstance(index, tuple) else new_items[0])
    return changed


def _rewrite_expand(node: fx.Node, ctx: Context, decision: Decision) -> bool:
    out = ctx.infos.get(node)
    if not isinstance(out, TInfo) or node.target != "expand":
        return False
    new, old = _new_sizes(decision, out), list(out.sizes())
    if new == old:
        return False
    packed = len(node.args) == 2 and isinstance(node.args[1], (list, tuple))
    shape = list(node.args[1]) if packed else list(node.args[1:])
    for d, (before, after) in enumerate(zip(old, new)):
        if before != after:
            shape[d] = after
    node.args = (node.args[0], tuple(shape)) if packed else (node.args[0], *shape)
    return True


def _rewrite_layer_norm(node: fx.Node, ctx: Context, decision: Decision) -> bool:
    source = ctx.info(node.args[0])
    shape = node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape")
    if not isinstance(source, TInfo) or not isinstance(shape, (tuple, list)) or len(shape) != 1:
        return False
    new = int(_kept(decision, source.slots[-1]).sum())
    if new == shape[0]:
        return False
    if len(node.args) > 1:
        node.args = (node.args[0], (new,)) + tuple(node.args[2:])
    else:
        node.kwargs = {**node.kwargs, "normalized_shape": (new,)}
    return True


def rewrite_graph(ctx: Context, decision: Decision, gm: fx.GraphModule) -> list[str]:
    """Patch literal sizes in ``gm``'s graph; returns the names of the nodes changed."""
    changed = []
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method"):
            continue
        name = op_name(node)
        done = False
        if name in ("view", "reshape"):
            done = _rewrite_view(node, ctx, decision)
        elif name in ("chunk", "split"):
            done = _rewrite_split(node, ctx, decision, name)
        elif name == "getitem":
            done = _rewrite_getitem(node, ctx, decision)
        elif name == "expand":
            done = _rewrite_expand(node, ctx, decision)
        elif name == "layer_norm":
            done = _rewrite_layer_norm(node, ctx, decision)
        if done:
            changed.append(node.name)
    if changed:
        gm.recompile()
    return changed
