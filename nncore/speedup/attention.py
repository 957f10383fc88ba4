"""Attention groups: the projections that make up one multi-head attention, and its head layout.

Shared by the head pruner (which masks whole heads) and the speedup engine (which removes them).
"""
from __future__ import annotations

import attrs
import numpy as np
import torch
import torch.fx as fx

from nncore.speedup.graph import module_path, op_name
from nncore.speedup.groups import PIN, GQAConstraint
from nncore.speedup.info import TInfo, no_zero


@attrs.frozen
class AttentionGroup:
    """One attention block's projections and head layout.

    :ivar name: qualified name of the module that owns the heads (the attention module)
    :ivar q: module whose output features hold the query heads (``head_dim`` features per head)
    :ivar k: module whose output features hold the key heads
    :ivar v: module whose output features hold the value heads
    :ivar o: output projection; its input features are the concatenated value heads
    :ivar num_heads: query heads
    :ivar num_kv_heads: key/value heads (``num_heads`` without grouped-query attention; query head
        ``h`` reads key/value head ``h // (num_heads // num_kv_heads)``)
    :ivar head_dim: features per head
    :ivar fused: ``q``, ``k`` and ``v`` name one projection whose output features are
        ``[q | k | v]`` (GPT-2's ``c_attn``; ``nn.MultiheadAttention``'s ``in_proj``)
    """

    name: str
    q: str
    k: str
    v: str
    o: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    fused: bool = False

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads


# -- finding attention in a captured graph -------------------------------------------------------
_PASS = {"contiguous", "to", "float", "half", "bfloat16", "type_as", "clone", "detach", "transpose", "permute",
         "mul", "add", "sub", "div", "neg", "getitem", "expand", "unsqueeze", "squeeze", "cat", "dropout",
         "masked_fill", "where", "view", "reshape", "flatten", "split", "chunk", "unbind", "t", "repeat_interleave"}
_SCORES = {"mul", "div", "add", "sub", "masked_fill", "where", "to", "float", "type_as", "dropout", "contiguous"}


@attrs.frozen
class Core:
    """One attention computation in a captured graph: ``softmax(q @ k^T) @ v`` (SDPA or eager).

    ``q``/``k``/``v`` are the nodes of shape ``[..., heads, length, head_dim]`` entering it."""

    node: fx.Node
    q: fx.Node
    k: fx.Node
    v: fx.Node


def _tensor_arg(node: fx.Node, index: int = 0, name: str | None = None) -> fx.Node | None:
    value = node.kwargs.get(name) if name and name in node.kwargs else (
        node.args[index] if len(node.args) > index else None)
    if isinstance(value, (list, tuple)) and value:
        value = value[-1]  # cat([cached, new]): the new part
    return value if isinstance(value, fx.Node) else None


def _back(node: fx.Node | None, names: set[str], stop: set[str], limit: int = 16) -> fx.Node | None:
    """Walk back through first tensor arguments of ops in ``names`` to an op in ``stop``."""
    for _ in range(limit):
        if node is None or node.op not in ("call_function", "call_method"):
            return None
        name = op_name(node)
        if name in stop:
            return node
        if name not in names:
            return None
        node = _tensor_arg(node)
    return None


def find_cores(capture) -> list[Core]:
    """Every attention computation: ``scaled_dot_product_attention`` calls, and the eager
    ``matmul -> (scale, mask) -> softmax -> matmul`` pattern."""
    cores = []
    for node in capture.nodes():
        if node.op not in ("call_function", "call_method"):
            continue
        name = op_name(node)
        if name == "scaled_dot_product_attention":
            q, k, v = (_tensor_arg(node, i, key) for i, key in enumerate(("query", "key", "value")))
            if q is not None and k is not None and v is not None:
                cores.append(Core(node, q, k, v))
        elif name in ("matmul", "bmm") and len(node.args) > 1:
            softmax = _back(_tensor_arg(node), _SCORES, {"softmax"})
            scores = _back(_tensor_arg(softmax), _SCORES, {"matmul", "bmm"}) if softmax is not None else None
            v = _tensor_arg(node, 1)
            if scores is not None and v is not None and len(scores.args) > 1:
                key_t = _tensor_arg(scores, 1)
                k = _tensor_arg(key_t) if key_t is not None and op_name(key_t) in ("transpose", "permute", "t") else None
                if k is not None:
                    cores.append(Core(node, _tensor_arg(scores), k, v))
    return cores


def split_view(node: fx.Node, values: dict) -> fx.Node | None:
    """The view/reshape that split a projection's features into ``[..., heads, head_dim]``,
    walking back from ``node`` (a query, key or value entering attention)."""
    head_dim = values[node].shape[-1]
    for _ in range(24):
        if node is None or node.op not in ("call_function", "call_method"):
            return None
        if op_name(node) in ("view", "reshape", "unflatten"):
            out, source = values.get(node), values.get(_tensor_arg(node))
            if (isinstance(out, torch.Tensor) and isinstance(source, torch.Tensor) and out.dim() >= 2
                    and out.shape[-1] == head_dim and source.shape[-1] != head_dim):
                return node
        if op_name(node) not in _PASS:
            return None
        node = _tensor_arg(node)
    return None


def preferred_splits(capture, cores: list[Core]) -> dict[fx.Node, int]:
    """Split views whose heads dimension (second to last) must carry the channel classes."""
    preferred = {}
    for core in cores:
        for node in (core.q, core.k, core.v):
            view = split_view(node, capture.values)
            if view is not None:
                preferred[view] = capture.values[view].dim() - 2
    return preferred


def projection(view: fx.Node | None) -> tuple[str | None, bool]:
    """The module whose output a split view reads, and whether that output is fused q|k|v."""
    node, fused = (_tensor_arg(view) if view is not None else None), False
    for _ in range(8):
        if node is None:
            return None, fused
        if node.op == "call_module":
            return str(node.target), fused
        name = op_name(node)
        if name in ("split", "chunk", "unbind"):
            fused = True
        elif name not in ("getitem", "contiguous", "to", "float"):
            return None, fused
        node = _tensor_arg(node)
    return None, fused


def output_projection(node: fx.Node) -> str | None:
    """The first module that reads the attention output (through transposes and reshapes)."""
    for _ in range(8):
        users = list(node.users)
        if len(users) != 1:
            return None
        node = users[0]
        if node.op == "call_module":
            return str(node.target)
        if op_name(node) not in ("transpose", "permute", "reshape", "view", "flatten", "contiguous", "to", "getitem"):
            return None
    return None


# -- propagation through scaled_dot_product_attention --------------------------------------------
def _repeat(slots: np.ndarray, count: int) -> int:
    """How many times each slot repeats consecutively (``repeat_kv``'s expand + reshape); 1 if not."""
    for rep in range(count, 1, -1):
        if count % rep == 0 and np.all(slots.reshape(-1, rep) == slots[::rep, None]) and \
                len(np.unique(slots[::rep])) == count // rep and np.all(slots != PIN):
            return rep
    return 1


def scaled_dot_product(ctx, node: fx.Node, value: torch.Tensor):
    """``softmax(q k^T / s) v`` per head: heads of q, k and v are coupled (key/value heads shared
    by a group of query heads under grouped-query attention); the head dimension stays whole (the
    kernel's default scale and rotary embeddings depend on it)."""
    q, k, v = (ctx.info(_tensor_arg(node, i, key)) for i, key in enumerate(("query", "key", "value")))
    if not all(isinstance(t, TInfo) and t.ndim >= 3 for t in (q, k, v)):
        return ctx.barrier(node, value)
    for info in (q, k, v):
        ctx.classes.pin(info.slots[-1], f"{ctx.op_label(node)} (attention head dimension)")
        ctx.classes.pin(info.slots[-2], f"{ctx.op_label(node)} (sequence)")
    mask = ctx.info(_tensor_arg(node, 3, "attn_mask"))
    if isinstance(mask, TInfo):
        ctx.pin_all(mask, f"{ctx.op_label(node)} (attention mask)")
    heads, kv_heads = q.slots[-3], k.slots[-3]
    ctx.classes.union_vectors(kv_heads, v.slots[-3])
    rep = len(heads) // len(kv_heads) if len(kv_heads) < len(heads) else _repeat(kv_heads, len(heads))
    kv = kv_heads if len(kv_heads) < len(heads) else kv_heads[::rep]
    if rep == 1:
        ctx.classes.union_vectors(heads, kv_heads)
    else:
        ctx.classes.constrain_gqa(GQAConstraint(module_path(node), heads, kv))
    batch = [q.slots[d] for d in range(q.ndim - 3)]
    for info in (k, v):
        for d in range(q.ndim - 3):
            if len(info.slots[d]) == len(batch[d]):
                ctx.classes.union_vectors(batch[d], info.slots[d])
    zero_heads = v.zero[-3] if len(kv_heads) == len(heads) else np.repeat(v.zero[-3], rep)
    slots = batch + [heads, q.slots[-2], v.slots[-1]]
    zeros = [no_zero(len(s)) for s in batch] + [zero_heads, no_zero(len(q.slots[-2])), no_zero(len(v.slots[-1]))]
    return TInfo(slots, zeros)


def window_attention(ctx, node: fx.Node, value: torch.Tensor):
    """torchvision's ``shifted_window_attention(input, qkv_weight, proj_weight, ...)`` (Swin): it
    derives the head size from the input width, so the input channels stay; the output channels
    are the ``proj`` weight's rows; the heads inside stay whole."""
    x = ctx.info(_tensor_arg(node, 0, "input"))
    weights = [ctx.info(_tensor_arg(node, i, key)) for i, key in ((1, "qkv_weight"), (2, "proj_weight"))]
    biases = [ctx.info(node.kwargs.get(key) if key in node.kwargs else (node.args[i] if len(node.args) > i else None))
              for i, key in ((9, "qkv_bias"), (10, "proj_bias"))]
    if not isinstance(x, TInfo) or not all(isinstance(w, TInfo) and w.ndim == 2 for w in weights):
        return ctx.barrier(node, value)
    qkv, proj = weights
    label = f"{ctx.op_label(node)} (attention heads inside)"
    ctx.classes.union_vectors(x.slots[-1], qkv.slots[1])
    ctx.classes.pin(x.slots[-1], f"{ctx.op_label(node)} (its head size is the input width / num_heads)", x.zero[-1])
    ctx.classes.pin(qkv.slots[0], label)
    ctx.classes.pin(proj.slots[1], label)
    for bias, weight in zip(biases, weights):
        if isinstance(bias, TInfo):
            ctx.classes.union_vectors(weight.slots[0], bias.slots[0])
    for d in range(3, len(node.args)):
        if d not in (9, 10):
            ctx.pin_all(ctx.info(node.args[d]), label)
    lead = x.slots[:-1]
    return TInfo(lead + [proj.slots[0]], [no_zero(len(s)) for s in lead] + [no_zero(len(proj.slots[0]))])
