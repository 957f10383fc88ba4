"""``nn.MultiheadAttention``: head pruning.

A head can go when ``out_proj`` ignores it (its input columns for that head are masked to
zero). The embedding dimension (inputs and output) is kept. ``nn.MultiheadAttention`` requires
``embed_dim == num_heads * head_dim``, so a pruned one is replaced by
:class:`PrunedMultiheadAttention`, which computes the same output with fewer heads.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nncore.speedup.info import TInfo, no_zero, pinned_vector, zero_slabs
from nncore.speedup.rules import ShrinkRule


class PrunedMultiheadAttention(nn.Module):
    """Multi-head attention whose heads and input/output widths were pruned independently.

    Same call signature and output as ``nn.MultiheadAttention``; the returned attention weights
    (when asked for) are over the remaining heads only. It is not a unit for later speedups: they
    look into its ``forward`` (plain projections and matrix products).
    """

    def __init__(self, mha: nn.MultiheadAttention, heads: np.ndarray, embed_in: np.ndarray | None = None,
                 embed_out: np.ndarray | None = None) -> None:
        super().__init__()
        embed, head_dim = mha.embed_dim, mha.head_dim
        index = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads.tolist()]) \
            if len(heads) else torch.zeros(0, dtype=torch.long)
        columns = torch.arange(embed) if embed_in is None else torch.as_tensor(embed_in, dtype=torch.long)
        rows = torch.arange(embed) if embed_out is None else torch.as_tensor(embed_out, dtype=torch.long)
        self.embed_dim, self.head_dim, self.num_heads = len(rows), head_dim, len(heads)
        self.kept_heads = torch.as_tensor(heads, dtype=torch.long)
        self.original_heads = mha.num_heads
        self.batch_first, self.dropout = mha.batch_first, mha.dropout
        weight, bias = mha.in_proj_weight.detach(), mha.in_proj_bias
        self.q_proj, self.k_proj, self.v_proj = (
            self._linear(weight[part * embed:(part + 1) * embed][index][:, columns],
                         None if bias is None else bias.detach()[part * embed:(part + 1) * embed][index])
            for part in range(3))
        out_bias = mha.out_proj.bias
        self.out_proj = self._linear(mha.out_proj.weight.detach()[rows][:, index],
                                     None if out_bias is None else out_bias.detach()[rows])

    @staticmethod
    def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        layer.weight = nn.Parameter(weight.clone())
        if bias is not None:
            layer.bias = nn.Parameter(bias.clone())
        return layer

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        """As ``nn.MultiheadAttention.forward``."""
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first and not unbatched:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        elif unbatched:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, length, _ = query.shape
        source = key.shape[1]
        heads, dim = self.num_heads, self.head_dim
        q = self.q_proj(query).view(n, length, heads, dim).transpose(1, 2)
        k = self.k_proj(key).view(n, source, heads, dim).transpose(1, 2)
        v = self.v_proj(value).view(n, source, heads, dim).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(dim)
        if attn_mask is not None:
            mask = attn_mask
            if mask.dim() == 3:
                mask = mask.view(n, self.original_heads, length, source)[:, self.kept_heads.to(mask.device)]
            scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        elif is_causal:
            causal = torch.ones(length, source, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(causal, float("-inf"))
        if key_padding_mask is not None:
            padding = key_padding_mask.view(n, 1, 1, source)
            scores = scores.masked_fill(padding, float("-inf")) if padding.dtype == torch.bool else scores + padding
        weights = scores.softmax(dim=-1)
        if self.training and self.dropout > 0:
            weights = F.dropout(weights, self.dropout)
        out = (weights @ v).transpose(1, 2).reshape(n, length, heads * dim)
        out = self.out_proj(out)
        if not self.batch_first or unbatched:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return out, weights.squeeze(0) if unbatched else weights


class MultiheadAttentionRule(ShrinkRule):
    """``nn.MultiheadAttention``: heads whose ``out_proj`` columns are all masked go; input channels
    that are zero (or leave the residual stream) and output channels whose ``out_proj`` rows are
    masked go too. A pruned one becomes a :class:`PrunedMultiheadAttention`."""

    def propagate(self, ctx, node, module, inputs, output):
        name = str(node.target)
        query = inputs[0] if inputs else ctx.info(node.kwargs.get("query"))
        if (not isinstance(query, TInfo) or not module._qkv_same_embed_dim or module.bias_k is not None
                or module.add_zero_attn or module.in_proj_weight is None):
            return ctx.barrier(node, output)
        embed_in, in_zero = query.slots[-1], query.zero[-1]
        for arg in list(node.args[1:3]) + [node.kwargs.get("key"), node.kwargs.get("value")]:
            info = ctx.info(arg)
            if isinstance(info, TInfo) and len(info.slots[-1]) == len(embed_in):
                ctx.classes.union_vectors(embed_in, info.slots[-1])
                in_zero = in_zero & info.zero[-1]
        ctx.classes.read(embed_in, in_zero)
        ctx.record(name, "embed_in", embed_in)
        heads = ctx.classes.new(module.num_heads)
        out_proj = f"{name}.out_proj"
        embed = module.embed_dim
        if ctx.is_masked(out_proj):
            mask = ctx.weight_mask(out_proj)
            ok = zero_slabs(mask, 1).reshape(module.num_heads, -1).all(axis=1)
            bias = module.out_proj.bias
            out_zero = zero_slabs(mask, 0) & (np.ones(embed, bool) if bias is None else (bias.detach() == 0).numpy())
        else:
            ok, out_zero = np.zeros(module.num_heads, bool), no_zero(embed)
        ctx.classes.read(heads, ok)
        ctx.record(name, "heads", heads)
        embed_out = ctx.classes.new(embed)
        ctx.record(name, "embed_out", embed_out)
        lead = query.slots[:-1]
        out = TInfo(lead + [embed_out], [no_zero(len(s)) for s in lead] + [out_zero])
        weights = None if output[1] is None else TInfo([pinned_vector(n) for n in output[1].shape],
                                                       [no_zero(n) for n in output[1].shape])
        return (out, weights)

    def shrink(self, module, kept):
        return PrunedMultiheadAttention(module, kept("heads"), kept("embed_in"), kept("embed_out")).train(module.training)
