"""Where the heads of an attention group are stored: NNI's ``[q, k, v, o]`` name groups, checked.

A head owns ``head_dim`` output features of Q, K and V (rows of a Linear weight and its bias;
*columns* of a Hugging Face ``Conv1D`` weight, stored ``(in, out)``) and the same input features of
the output projection O (columns of a Linear weight, rows of a ``Conv1D`` weight). A fused projection
is named three times: GPT-2's ``c_attn`` (output features ``[q | k | v]``), or an
``nn.MultiheadAttention`` (its ``in_proj_weight`` / ``in_proj_bias``, or ``q/k/v_proj_weight``; O is
its ``out_proj``).
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable, Mapping

import attrs
import torch
import torch.nn as nn

from nncore.builtin_pruners.head_criteria import ObservedProjection, projection_kind
from nncore.errors import ConfigError
from nncore.speedup.attention import AttentionGroup
from nncore.wrapper import ModuleWrapper


@attrs.frozen
class FeatureSlice:
    """``heads`` consecutive heads of ``head_dim`` features each along ``axis`` of ``parameter`` (a name
    relative to module ``module``), starting at index ``offset``."""

    module: str
    parameter: str
    axis: int
    offset: int
    heads: int


@attrs.frozen
class HeadLayout:
    """One attention group and where its heads are stored.

    :ivar q: slices of the query heads (the first is the weight, ranked by the weight criteria).
    :ivar o: the input features of the output projection.
    :ivar members: the distinct modules of the group (``config_list`` selects all of them or none).
    :ivar wrapped: the modules that get a wrapper (an ``nn.MultiheadAttention`` is wrapped whole).
    :ivar observed: where the head outputs are seen by the activation criteria.
    """

    group: AttentionGroup
    q: tuple[FeatureSlice, ...]
    k: tuple[FeatureSlice, ...]
    v: tuple[FeatureSlice, ...]
    o: FeatureSlice
    members: tuple[str, ...]
    wrapped: tuple[str, ...]
    observed: ObservedProjection


def _widths(module: nn.Module, kind: str) -> tuple[int, int]:
    """``(in, out)`` features of a Linear or ``Conv1D``."""
    rows, columns = module.weight.shape
    return (columns, rows) if kind == "linear" else (rows, columns)


def _common_prefix(names: Iterable[str]) -> str:
    prefix: list[str] = []
    for parts in zip(*(name.split(".") for name in names)):
        if len(set(parts)) > 1:
            break
        prefix.append(parts[0])
    return ".".join(prefix)


def groups_from_names(model: nn.Module, name_groups: Any, head_dim: int) -> list[AttentionGroup]:
    """Check NNI's ``attention_name_groups`` (a list of ``[q, k, v, o]`` module names) against ``model``.

    :raises ConfigError: listing every problem, each naming the group and the module.
    """
    if not isinstance(name_groups, (list, tuple)) or not name_groups:
        raise ConfigError(f"attention_name_groups must be a non-empty list of [q, k, v, o] module name lists, "
                          f"got {name_groups!r}", header="invalid attention_name_groups")
    modules = dict(model.named_modules())
    errors: list[str] = []
    groups: list[AttentionGroup] = []
    owner: dict[str, int] = {}
    for index, names in enumerate(name_groups):
        where = f"attention_name_groups[{index}]"
        if not isinstance(names, (list, tuple)) or len(names) != 4 or not all(isinstance(n, str) for n in names):
            count = f"{len(names)} names" if isinstance(names, (list, tuple)) else type(names).__name__
            errors.append(f"{where}: a group names four modules [q, k, v, o], got {count}: {names!r}")
            continue
        missing = [name for name in dict.fromkeys(names) if name not in modules]
        for name in missing:
            close = difflib.get_close_matches(name, list(modules), n=1)
            errors.append(f"{where}: the model has no module named {name!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
        for name in dict.fromkeys(names):
            if name in owner and owner[name] != index:
                errors.append(f"{where}: {name!r} is already in attention_name_groups[{owner[name]}]")
            owner.setdefault(name, index)
        if missing:
            continue
        problem, group = _group_from_names(modules, *names, head_dim)
        if problem is not None:
            errors.append(f"{where}: {problem}")
        else:
            groups.append(group)
    if errors:
        raise ConfigError(errors, header="invalid attention_name_groups")
    return groups


def _group_from_names(modules: Mapping[str, nn.Module], q: str, k: str, v: str, o: str,
                      head_dim: int) -> tuple[str | None, AttentionGroup | None]:
    """``(problem, None)`` or ``(None, group)`` for one ``[q, k, v, o]``."""
    kinds = {name: projection_kind(modules[name]) for name in (q, k, v, o)}
    for name, kind in kinds.items():
        if kind is None or (kind == "mha" and name != q):
            return f"{name!r} is a {type(modules[name]).__name__}, not a Linear, Hugging Face Conv1D " \
                   "or (for q, k and v) nn.MultiheadAttention", None
    fused = q == k == v
    if not fused and len({q, k, v}) < 3:
        return f"q, k and v ({q!r}, {k!r}, {v!r}) must be three projections, or one fused projection named three times", None
    o_in = _widths(modules[o], kinds[o])[0]
    if kinds[q] == "mha":
        mha = modules[q]
        if not fused or o != f"{q}.out_proj":
            return f"nn.MultiheadAttention {q!r} is named as q, k and v, with its out_proj {q + '.out_proj'!r} as o", None
        if head_dim != mha.head_dim:
            return f"head_hidden_dim={head_dim} does not match nn.MultiheadAttention {q!r} " \
                   f"({mha.num_heads} heads of {mha.head_dim} features)", None
        q_width = kv_width = mha.embed_dim
    elif fused:
        total = _widths(modules[q], kinds[q])[1]
        q_width, rest = o_in, total - o_in
        if rest <= 0 or rest % 2:
            return f"the {total} output features of fused {q!r} do not split into the {o_in} query features " \
                   f"that {o!r} reads and equal key and value parts", None
        kv_width = rest // 2
    else:
        q_width, k_width, v_width = (_widths(modules[name], kinds[name])[1] for name in (q, k, v))
        if k_width != v_width:
            return f"key projection {k!r} gives {k_width} features but value projection {v!r} gives {v_width}", None
        kv_width = k_width
    for name, width in ((q, q_width), (k, kv_width)):
        if width % head_dim:
            return f"head_hidden_dim={head_dim} does not divide the {width} output features of {name!r}", None
    if o_in != q_width:
        return f"output projection {o!r} reads {o_in} features but query projection {q!r} gives {q_width}", None
    num_heads, num_kv_heads = q_width // head_dim, kv_width // head_dim
    if num_heads % num_kv_heads:
        return f"{q!r} has {num_heads} heads, not a multiple of the {num_kv_heads} key/value heads of {k!r}", None
    return None, AttentionGroup(name=_common_prefix((q, k, v, o)), q=q, k=k, v=v, o=o, num_heads=num_heads,
                                num_kv_heads=num_kv_heads, head_dim=head_dim, fused=fused)


def _projection_slices(module_name: str, module: nn.Module, role: str, offset: int, heads: int,
                       head_dim: int) -> tuple[FeatureSlice, ...]:
    kind = projection_kind(module)
    if kind == "mha":
        part = "qkv".index(role)
        width = module.embed_dim
        found = [("in_proj_weight", 0, part * width) if module._qkv_same_embed_dim else (f"{role}_proj_weight", 0, 0)]
        if module.in_proj_bias is not None:
            found.append(("in_proj_bias", 0, part * width))
        extra = {"k": module.bias_k, "v": module.bias_v}.get(role)
        if extra is not None:  # add_bias_kv: (1, 1, embed_dim)
            found.append((f"bias_{role}", 2, 0))
    else:
        found = [("weight", 0 if kind == "linear" else 1, offset)]
        if getattr(module, "bias", None) is not None:
            found.append(("bias", 0, offset))
    return tuple(FeatureSlice(module_name, parameter, axis, start, heads) for parameter, axis, start in found)


def head_layout(model: nn.Module, group: AttentionGroup) -> HeadLayout:
    """Where the heads of ``group`` are stored in ``model``."""
    modules = dict(model.named_modules())
    q_width = group.num_heads * group.head_dim
    kv_width = group.num_kv_heads * group.head_dim
    offsets = (0, q_width, q_width + kv_width) if group.fused else (0, 0, 0)
    q, k, v = (_projection_slices(name, modules[name], role, offset, heads, group.head_dim)
               for name, role, offset, heads in zip((group.q, group.k, group.v), "qkv", offsets,
                                                    (group.num_heads, group.num_kv_heads, group.num_kv_heads)))
    members = tuple(dict.fromkeys((group.q, group.k, group.v, group.o)))
    if projection_kind(modules[group.q]) == "mha":
        mha = modules[group.q]
        o = FeatureSlice(group.q, "out_proj.weight", 1, 0, group.num_heads)
        observed = ObservedProjection(mha, "mha", group.num_heads)
        wrapped: tuple[str, ...] = (group.q,)
    else:
        kind = projection_kind(modules[group.o])
        o = FeatureSlice(group.o, "weight", 1 if kind == "linear" else 0, 0, group.num_heads)
        observed = ObservedProjection(modules[group.o], kind, group.num_heads)
        wrapped = members
    return HeadLayout(group, q, k, v, o, members, wrapped, observed)


def head_rows(tensor: torch.Tensor, where: FeatureSlice, head_dim: int) -> torch.Tensor:
    """The head features of ``tensor`` at ``where``, output features first: ``(heads * head_dim, -1)``."""
    part = tensor.narrow(where.axis, where.offset, where.heads * head_dim)
    return part.movedim(where.axis, 0).reshape(where.heads * head_dim, -1)


class AttentionWrapper(ModuleWrapper):
    """The wrapper of an ``nn.MultiheadAttention``: attributes it does not have are read from the
    attention itself (``nn.TransformerEncoderLayer`` reads ``self_attn.batch_first``, ``in_proj_weight``...)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            module = self.__dict__.get("_modules", {}).get("module")
            if module is None:
                raise
            return getattr(module, name)
