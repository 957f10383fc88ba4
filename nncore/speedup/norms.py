"""Norms over the hidden size (LayerNorm, RMSNorm): where a mask asks to shrink the residual stream.

A normalization mixes every channel of its last dimension (mean and variance), so a channel that
is merely zero cannot leave it exactly. A zero in a norm's *weight mask* is therefore read as a
request: remove that hidden channel from the whole residual stream (embeddings, every projection
that reads or writes the stream, every norm, the head). The result is the same architecture built
at the smaller hidden size with the kept weights, not the masked model's function. Every norm on
one stream must carry the same mask (:func:`nncore.speedup.groups.decide` names those that differ).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch.fx as fx

from nncore.speedup.context import Context
from nncore.speedup.graph import module_path
from nncore.speedup.info import TInfo


def norm_channels(ctx: Context, node: fx.Node, x: TInfo, owner: str, kind: str) -> TInfo:
    """A norm owned by module ``owner`` over the last dimension of ``x``: the channels stay
    aligned through it; its weight mask votes which of them leave the stream."""
    slots = x.slots[-1]
    ctx.classes.pin(slots, f"{kind} {owner!r} normalizes over these channels (mask the weights of the stream's "
                           f"norms to remove hidden channels)", soft=True)
    mask = ctx.weight_mask(owner)
    remove = np.zeros(len(slots), bool) if mask is None else (mask.detach().reshape(-1) == 0).cpu().numpy()
    ctx.classes.request(slots, remove, owner)
    return x.without_zero()


def functional_layer_norm(ctx: Context, node: fx.Node, x: TInfo, args: tuple, kwargs: dict) -> Any:
    """``F.layer_norm`` in a module's own code (``LayerNorm2d`` permuting channels last)."""
    normalized = args[1] if len(args) > 1 else kwargs.get("normalized_shape")
    weight = node.args[2] if len(node.args) > 2 else node.kwargs.get("weight")
    bias = node.args[3] if len(node.args) > 3 else node.kwargs.get("bias")
    if len(normalized) != 1:
        for d in range(-len(normalized), 0):
            ctx.classes.pin(x.slots[d], f"{ctx.op_label(node)} (normalizes over several dimensions)")
        return x.without_zero()
    owner = module_path(node)
    if isinstance(weight, fx.Node) and weight.op == "get_attr":
        owner = str(weight.target).rpartition(".")[0]
    out = norm_channels(ctx, node, x, owner, "layer_norm")
    ctx.functional_norms[owner] = x.slots[-1]
    for param in (weight, bias):
        info = ctx.info(param)
        if isinstance(info, TInfo) and info.ndim == 1:
            ctx.classes.union_vectors(x.slots[-1], info.slots[0])
        elif isinstance(param, fx.Node):
            ctx.pin_all(info, f"{ctx.op_label(node)} (computed affine parameters)")
            ctx.classes.pin(x.slots[-1], f"{ctx.op_label(node)} (computed affine parameters)")
    return out


def update_norm_shapes(ctx: Context, decision, journal) -> dict[str, dict[str, tuple]]:
    """Modules that call ``F.layer_norm`` with their own ``normalized_shape`` (``LayerNorm2d``):
    the attribute follows their shrunk weight. Returns ``{module: {"normalized_shape": new}}``."""
    changed = {}
    for owner, slots in ctx.functional_norms.items():
        module = ctx.capture.get_submodule(owner) if owner else ctx.capture.model
        kept = int((~decision.removed_mask(slots)).sum())
        if tuple(getattr(module, "normalized_shape", ())) == (len(slots),) and kept != len(slots):
            journal.touch(module)
            module.normalized_shape = (kept,)
            changed[owner] = {"normalized_shape": (kept,)}
    return changed
