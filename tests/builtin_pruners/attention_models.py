"""Tiny hand-written attention models for the head pruner's tests (and the conformance test)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn


class TinyAttention(nn.Module):
    """Multi-head attention from four Linear projections ``q, k, v, o``; grouped-query attention when
    ``kv_heads < heads`` (query head ``h`` reads key/value head ``h // (heads // kv_heads)``).
    """

    def __init__(self, embed: int = 8, heads: int = 4, kv_heads: int | None = None, head_dim: int = 2) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads or heads, head_dim
        self.q = nn.Linear(embed, heads * head_dim)
        self.k = nn.Linear(embed, self.kv_heads * head_dim)
        self.v = nn.Linear(embed, self.kv_heads * head_dim)
        self.o = nn.Linear(heads * head_dim, embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        repeat = self.heads // self.kv_heads
        q = self.q(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        if repeat > 1:
            k, v = k.repeat_interleave(repeat, 1), v.repeat_interleave(repeat, 1)
        weights = (q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)).softmax(-1)
        return self.o((weights @ v).transpose(1, 2).reshape(batch, length, -1))


class TinyTransformer(nn.Module):
    """``layers`` residual attention layers and a linear head: input ``(batch, tokens, embed)``."""

    def __init__(self, layers: int = 2, embed: int = 8, heads: int = 4, kv_heads: int | None = None,
                 head_dim: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TinyAttention(embed, heads, kv_heads, head_dim) for _ in range(layers))
        self.head = nn.Linear(embed, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return self.head(x.mean(dim=1))


def tiny_groups(layers: int = 2) -> list[list[str]]:
    """``attention_name_groups`` of a :class:`TinyTransformer`."""
    return [[f"layers.{i}.{p}" for p in "qkvo"] for i in range(layers)]


def make_tiny_transformer(**kwargs) -> TinyTransformer:
    """A seeded :class:`TinyTransformer`."""
    torch.manual_seed(0)
    return TinyTransformer(**kwargs)
