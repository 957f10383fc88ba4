"""Folding constant channels into the bias of the layers that read them.

A channel that is constant rather than zero (see :mod:`nncore.speedup.constants`) adds a fixed
offset to every layer that mixes channels. Where that offset is the same at every output position,
it moves exactly into the layer's bias and the channel can go:

* ``nn.Linear``: ``bias += W[:, i] * c``;
* ``nn.Conv1d/2d/3d`` (any kernel, stride, dilation, groups) without zero padding:
  ``bias += c * W[:, i].sum(kernel)``. Zero padding makes border outputs see zeros instead of
  the constant, so a padded convolution keeps the channel (``reflect``/``replicate``/``circular``
  padding repeats the constant, and folds).

A layer gets a bias if it has none. Not folded, and the channel kept with the reason in the
summary: subclasses that change ``forward``, a shared bias, a layer called more than once with
different constants, any other reader.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from nncore.speedup.constants import CONVS, consts_of, stock, zero_padding
from nncore.speedup.info import TInfo


def folded_inputs(ctx, node: fx.Node, module: nn.Module, x: TInfo, dim: int) -> np.ndarray:
    """Which input channels (dimension ``dim`` of the input ``x``) hold a non-zero constant that
    ``module`` folds exactly into its bias. The constants are recorded for :func:`fold_into_bias`;
    constants it cannot fold are reported to the channel classes with the reason.

    A module called more than once has one bias: a channel whose constant differs between calls
    (or is zero in one call and not in another) gets an extra read that keeps it."""
    size = len(x.slots[dim])
    found = np.zeros(size, dtype=bool)
    consts = consts_of(ctx, node.args[0])
    values = consts[dim] if isinstance(consts, list) and len(consts) == x.ndim and len(consts[dim]) == size \
        else np.full(size, np.nan)
    seen = np.where(x.zero[dim], 0.0, values)
    name = str(node.target)
    first = ctx.folds.setdefault(name, seen)
    if first is not seen and len(first) == size:
        differ = (first != seen) & ~(np.isnan(first) & np.isnan(seen))
        if differ.any():
            ctx.classes.read(x.slots[dim][differ], np.zeros(int(differ.sum()), dtype=bool))
            ctx.classes.keep_constant(x.slots[dim][differ], f"channels that are constant, not zero, where "
                                      f"{ctx.op_label(node)} reads them: its calls read different constants, "
                                      f"and one bias cannot fold them all")
    constant = ~np.isnan(seen) & (seen != 0)
    if not constant.any():
        return found
    why = _cannot_fold(ctx, name, module)
    if why:
        ctx.classes.keep_constant(x.slots[dim][constant], f"channels that are constant, not zero, where "
                                                          f"{ctx.op_label(node)} reads them: {why}")
        return found
    return constant


def _cannot_fold(ctx, name: str, module: nn.Module) -> str | None:
    if stock(module, CONVS + (nn.Linear,)) is None:
        return f"{type(module).__name__} overrides forward, so a bias fold is not proven exact"
    shared = ctx.cache.get("shared biases")
    if shared is None:  # biases tied between modules, or read directly by the graph
        owners = Counter(id(m.bias) for m in ctx.capture.model.modules() if isinstance(getattr(m, "bias", None),
                                                                                       torch.Tensor))
        read = {str(n.target) for n in ctx.capture.nodes() if n.op == "get_attr"}
        shared = ctx.cache["shared biases"] = (owners, read)
    owners, read = shared
    if module.bias is not None and owners[id(module.bias)] > 1 or f"{name}.bias" in read:
        return "its bias is shared, so a fold would change another layer"
    if isinstance(module, CONVS) and zero_padding(module):
        return ("its zero padding would make a bias fold inexact (border outputs see the padding, not the "
                "constant)")
    return None


@torch.no_grad()
def fold_into_bias(ctx, owner: str, module: nn.Module, removed: dict, masks: dict) -> bool:
    """Before ``module`` is sliced: add the offset of its removed constant inputs to its bias (a
    new parameter; the old one is left for a rollback). Returns whether ``module`` had no bias and
    got one (a saved model records that, see :mod:`nncore.speedup.persist`)."""
    values = ctx.folds.get(owner)
    gone = removed.get("in")
    if values is None or gone is None:
        return False
    take = gone & ~np.isnan(values) & (values != 0)
    if not take.any():
        return False
    weight = module.weight.detach()
    mask = (masks.get(owner) or {}).get("weight")
    if mask is not None:  # the masked model's weights (filter masks may be applied only later)
        weight = weight * mask.to(device=weight.device, dtype=weight.dtype)
    constants = torch.zeros(len(take), dtype=torch.float64, device=weight.device)
    constants[torch.as_tensor(np.nonzero(take)[0], device=weight.device)] = torch.as_tensor(
        values[take], dtype=torch.float64, device=weight.device)
    weight = weight.double()
    if isinstance(module, nn.Linear):
        offset = weight @ constants
    else:
        groups, cout = module.groups, module.out_channels
        per_input = weight.sum(dim=tuple(range(2, weight.dim()))).reshape(groups, cout // groups, -1)
        offset = (per_input @ constants.reshape(groups, -1, 1)).reshape(cout)
    added = module.bias is None
    if added:
        add_zero_bias(module)
    module.bias = nn.Parameter((module.bias.detach().double() + offset).to(module.bias.dtype),
                               requires_grad=module.bias.requires_grad)
    return added


def add_zero_bias(module: nn.Module) -> None:
    """Give a convolution or linear layer without bias a zero bias (as trainable as its weight)."""
    weight = module.weight
    module.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device),
                               requires_grad=weight.requires_grad)


def folded_counts(ctx, decision) -> dict[str, int]:
    """Reader module -> number of removed constant channels folded into its bias."""
    counts = {}
    for owner, values in ctx.folds.items():
        slots = ctx.records.get((owner, "in"))
        if slots is None or len(slots) != len(values):
            continue
        count = int((decision.removed_mask(slots) & ~np.isnan(values) & (values != 0)).sum())
        if count:
            counts[owner] = count
    return counts
