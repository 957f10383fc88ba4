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
    """Multi-head attention with ``num_heads * head_dim`` different from ``embed_dim``.

    Same call signature and output as ``nn.MultiheadAttention``; the returned attention weights
    (when asked for) are over the remaining heads only.
    """

    def __init__(self, mha: nn.MultiheadAttention, heads: np.ndarray) -> None:
        super().__init__()
        embed, head_dim = mha.embed_dim, mha.head_dim
        index = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads.tolist()]) \
            if len(heads) else torch.zeros(0, dtype=torch.long)
        self.embed_dim, self.head_dim, self.num_heads = embed, head_dim, len(heads)
        self.kept_heads = torch.as_tensor(heads, dtype=torch.long)
        self.original_heads = mha.num_heads
        self.batch_first, self.dropout = mha.batch_first, mha.dropout
        weight, bias = mha.in_proj_weight.detach(), mha.in_proj_bias
        self.q_proj, self.k_proj, self.v_proj = (
            self._linear(weight[part * embed:(part + 1) * embed][index],
                         None if bias is None else bias.detach()[part * embed:(part + 1) * embed][index])
            for part in range(3))
        out_bias = mha.out_proj.bias
        self.out_proj = self._linear(mha.out_proj.weight.detach()[:, index],
                                     None if out_bias is None else out_bias.detach())

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
    """Prunes heads of ``nn.MultiheadAttention`` whose ``out_proj`` columns are all masked."""

    def propagate(self, ctx, node, module, inputs, output):
        name = str(node.target)
        query = inputs[0] if inputs else ctx.info(node.kwargs.get("query"))
        if (not isinstance(query, TInfo) or not module._qkv_same_embed_dim or module.bias_k is not None
                or module.add_zero_attn or module.in_proj_weight is None):
            return ctx.barrier(node, output)
        for arg in list(node.args) + list(node.kwargs.values()):
            info = ctx.info(arg)
            if isinstance(info, TInfo):
                ctx.classes.pin(info.slots[-1], f"nn.MultiheadAttention {name!r} (embedding dimension)")
        heads = ctx.classes.new(module.num_heads)
        out_proj = f"{name}.out_proj"
        if ctx.is_masked(out_proj):
            columns = zero_slabs(ctx.weight_mask(out_proj), 1).reshape(module.num_heads, -1)
            ok = columns.all(axis=1)
        else:
            ok = np.zeros(module.num_heads, bool)
        ctx.classes.read(heads, ok)
        ctx.record(name, "heads", heads)
        out_value = output[0]
        lead = query.slots[:-1]
        out = TInfo(lead + [pinned_vector(out_value.shape[-1])],
                    [no_zero(len(s)) for s in lead] + [no_zero(out_value.shape[-1])])
        weights = None if output[1] is None else TInfo([pinned_vector(n) for n in output[1].shape],
                                                       [no_zero(n) for n in output[1].shape])
        return (out, weights)

    def shrink(self, module, kept):
        heads = kept("heads")
        if isinstance(module, PrunedMultiheadAttention):
            raise NotImplementedError("a PrunedMultiheadAttention cannot be pruned again")
        return PrunedMultiheadAttention(module, heads).train(module.training)
