"""Attention groups: the projections that make up one multi-head attention, and its head layout.

Shared by the head pruner (which masks whole heads) and the speedup engine (which removes them).
"""
from __future__ import annotations

import attrs


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
