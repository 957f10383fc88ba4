"""How important each attention head is, and which heads go: the criteria of TransformerHeadPruner.

Scores are per *query* head (NNI 2.10's criteria; with grouped-query attention a query head
counts the key/value head it reads):

- ``l1_weight`` / ``l2_weight``: the mean of the L1 (L2) norms of the head's rows of Q, K and V
  (weights only, no bias).
- ``l1_activation``: the sum of ``|x|`` over the head's features of ``x``, the input of the output
  projection (the concatenated head outputs), over every token of every batch observed.
- ``l2_activation``: the L2 norm of the head's slice of ``x``, summed over tokens and batches.
- ``taylorfo``: the sum of ``|x * dL/dx|`` over the head's features, tokens and batches (Michel et
  al., 2019), where ``dL/dx`` is the gradient through the output projection.

``nn.MultiheadAttention`` never calls its ``out_proj`` module, so ``x`` is recomputed from the
attention's inputs without dropout (the module's own forward is left alone).

Heads are pruned in *units* (:func:`head_units`): one head; with grouped-query attention one key/value
group (its key/value head and every query head that reads it), or, when only query heads are pruned,
one query head from every key/value group (so every group keeps as many).
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Sequence

import attrs
import torch
import torch.nn as nn
import torch.nn.functional as F

CRITERIA: tuple[str, ...] = ("l1_weight", "l2_weight", "l1_activation", "l2_activation", "taylorfo")
ACTIVATION_CRITERIA: tuple[str, ...] = ("l1_activation", "l2_activation")
PRUNED = -math.inf
"""Importance of a unit whose heads are already pruned: it is chosen first and stays pruned."""


def projection_kind(module: nn.Module) -> str | None:
    """``'linear'``, ``'conv1d'`` (Hugging Face's ``Conv1D``, weight stored ``(in, out)``), ``'mha'``
    (``nn.MultiheadAttention``) or ``None`` for a module that is no attention projection."""
    if isinstance(module, nn.MultiheadAttention):
        return "mha"
    if isinstance(module, nn.Linear):
        return "linear"
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return "conv1d"
    return None


# -- weight criteria ----------------------------------------------------------------------------------


def weight_head_scores(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, num_kv_heads: int,
                       norm: int) -> torch.Tensor:
    """Per query head: ``(|Q_h| + |K_j| + |V_j|) / 3`` with ``j`` the key/value head it reads.

    :param q: the query projection's weight, output features first: ``(num_heads * head_dim, in)``.
    :param k: the key projection's, ``(num_kv_heads * head_dim, in)``; ``v`` alike.
    :param norm: 1 or 2.
    """
    repeat = num_heads // num_kv_heads
    q_norms = q.detach().float().reshape(num_heads, -1).norm(norm, dim=1)
    k_norms = k.detach().float().reshape(num_kv_heads, -1).norm(norm, dim=1).repeat_interleave(repeat)
    v_norms = v.detach().float().reshape(num_kv_heads, -1).norm(norm, dim=1).repeat_interleave(repeat)
    return ((q_norms + k_norms + v_norms) / 3).cpu()


# -- activation criteria ------------------------------------------------------------------------------


@attrs.frozen
class ObservedProjection:
    """Where one group's head outputs ``x`` can be seen: the input of ``module`` (an output projection of
    kind ``'linear'`` or ``'conv1d'``), or recomputed from the inputs of ``module`` (kind ``'mha'``)."""

    module: nn.Module
    kind: str
    num_heads: int


def mha_head_outputs(mha: nn.MultiheadAttention, args: tuple, kwargs: dict) -> torch.Tensor:
    """The concatenated head outputs (the input of ``out_proj``) of ``mha`` called with ``args, kwargs``,
    in the layout of its output; computed without dropout and without gradient."""
    call = inspect.signature(nn.MultiheadAttention.forward).bind(mha, *args, **kwargs)
    call.apply_defaults()
    given = call.arguments
    query, key, value = given["query"], given["key"], given["value"]
    batched = query.dim() == 3
    if mha.batch_first and batched:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    identity = torch.eye(mha.embed_dim, dtype=query.dtype, device=query.device)
    separate = {} if mha._qkv_same_embed_dim else {
        "use_separate_proj_weight": True, "q_proj_weight": mha.q_proj_weight,
        "k_proj_weight": mha.k_proj_weight, "v_proj_weight": mha.v_proj_weight,
    }
    with torch.no_grad():
        heads, _ = F.multi_head_attention_forward(
            query, key, value, mha.embed_dim, mha.num_heads, mha.in_proj_weight, mha.in_proj_bias,
            mha.bias_k, mha.bias_v, mha.add_zero_attn, 0.0, identity, None, training=False,
            key_padding_mask=given["key_padding_mask"], need_weights=False, attn_mask=given["attn_mask"],
            is_causal=given["is_causal"], **separate,
        )
    return heads.transpose(0, 1) if mha.batch_first and batched else heads


def _output_weight(projection: ObservedProjection) -> torch.Tensor:
    """The output projection's weight as ``(out, in)``, so that ``dL/dx = dL/dy @ W``."""
    module = projection.module
    if projection.kind == "mha":
        return module.out_proj.weight
    return module.weight.t() if projection.kind == "conv1d" else module.weight


class HeadStatistics:
    """Sums one activation criterion per query head while in a ``with`` block.

    :param criterion: ``'l1_activation'``, ``'l2_activation'`` or ``'taylorfo'``.
    :param projections: one per attention group.
    """

    def __init__(self, criterion: str, projections: Sequence[ObservedProjection]):
        self.criterion = criterion
        self.projections = tuple(projections)
        self.sums: list[torch.Tensor | None] = [None] * len(self.projections)
        self._handles: list[Any] = []

    def __enter__(self) -> HeadStatistics:
        for index, projection in enumerate(self.projections):
            hook = self._hook(index, projection)
            self._handles.append(projection.module.register_forward_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _add(self, index: int, per_head: torch.Tensor) -> None:
        total = self.sums[index]
        self.sums[index] = per_head if total is None else total + per_head

    def _hook(self, index: int, projection: ObservedProjection) -> Callable[..., None]:
        heads = projection.num_heads

        def split(x: torch.Tensor) -> torch.Tensor:  # (..., H * d) -> (tokens, H, d)
            return x.detach().float().reshape(-1, heads, x.shape[-1] // heads)

        def observe(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if projection.kind == "mha":
                x, y = mha_head_outputs(module, args, kwargs), output[0]
            else:
                x, y = (args[0] if args else next(iter(kwargs.values()))), output
            if self.criterion == "l1_activation":
                self._add(index, split(x).abs().sum(dim=(0, 2)).cpu())
            elif self.criterion == "l2_activation":
                self._add(index, split(x).norm(dim=2).sum(dim=0).cpu())
            elif y.requires_grad:
                x_heads, weight = split(x), _output_weight(projection)

                def taylor(grad: torch.Tensor) -> None:
                    grad_x = split(grad.detach().float() @ weight.detach().float())
                    self._add(index, (x_heads * grad_x).abs().sum(dim=(0, 2)).cpu())

                y.register_hook(taylor)

        return observe


# -- which heads go -------------------------------------------------------------------------------------


@attrs.frozen
class Unit:
    """Query heads of one group pruned together, and their summed importance."""

    heads: tuple[int, ...]
    importance: float


def head_units(scores: torch.Tensor, num_kv_heads: int, pruned: set[int], query_heads_only: bool) -> list[Unit]:
    """The units of one group, given its per-query-head ``scores`` and the query heads already ``pruned``.

    Without grouped-query attention each head is a unit. With it, a unit is a whole key/value group
    (importance summed over its query heads), or, with ``query_heads_only``, the ``r``-th least
    important query head of every key/value group (already pruned heads first). A unit whose heads
    are all pruned has importance :data:`PRUNED`.
    """
    num_heads = scores.numel()
    size = num_heads // num_kv_heads
    values = scores.tolist()
    if size == 1 or not query_heads_only:
        units = [tuple(range(j * size, (j + 1) * size)) for j in range(num_kv_heads)]
    else:
        orders = [sorted(range(j * size, (j + 1) * size), key=lambda h: (h not in pruned, values[h], h))
                  for j in range(num_kv_heads)]
        units = [tuple(order[rank] for order in orders) for rank in range(size)]
    return [Unit(heads, PRUNED if all(h in pruned for h in heads) else sum(values[h] for h in heads))
            for heads in units]


def units_to_prune(count: int, sparsity: float) -> int:
    """NNI's rounding: ``int(count * sparsity)`` (a hair of tolerance against float error)."""
    return int(count * sparsity + 1e-9)


def select_local(units: Sequence[Unit], sparsity: float) -> set[int]:
    """Query heads of the ``int(len(units) * sparsity)`` least important units (ties: lower index);
    one unit always stays."""
    count = min(units_to_prune(len(units), sparsity), len(units) - 1)
    order = sorted(range(len(units)), key=lambda u: units[u].importance)
    return {head for u in order[:count] for head in units[u].heads}


def select_global(groups: Sequence[Sequence[Unit]], sparsity: float) -> list[set[int]]:
    """Query heads to prune per group: the ``int(total units * sparsity)`` least important units of all
    groups together, skipping a unit that would leave its group with none (NNI's global sort)."""
    target = units_to_prune(sum(len(units) for units in groups), sparsity)
    ranked = sorted(((unit.importance, g, u) for g, units in enumerate(groups) for u, unit in enumerate(units)),
                    key=lambda item: item[0])
    remaining = [len(units) for units in groups]
    chosen: list[set[int]] = [set() for _ in groups]
    taken = 0
    for _, g, u in ranked:
        if taken >= target:
            break
        if remaining[g] > 1:
            chosen[g].update(groups[g][u].heads)
            remaining[g] -= 1
            taken += 1
    return chosen
