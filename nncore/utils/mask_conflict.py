"""``fix_mask_conflict``: make masks consistent across coupled layers, as NNI's does.

Three fixes, repeated until nothing changes (each only un-prunes, so it ends):

* **group alignment**: a grouped convolution, or a layer feeding one, must prune as many filters
  in every group; the extra pruned filters of the other groups are kept (the first pruned ones
  of each group, in index order, stay pruned, as in NNI);
* **shared channels**: layers whose channels are coupled (residual adds, depthwise convolutions,
  element-wise products; with the BatchNorms and other per-channel modules on them) prune a
  channel only when every one of them prunes it; when one of them has no mask, none prunes it;
* **concat padding**: a layer with no mask whose output is concatenated with pruned layers gets
  an all-ones mask, so that the concatenation's masks are complete.

Masks that are not whole channels (fine-grained) are left as they are and keep their channels.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from nncore.artifacts import MaskDict, read_mask_file
from nncore.speedup.analysis import Analysis
from nncore.speedup.masks import read_masks
from nncore.utils.dependency import _check_arguments, concatenated_sets, grouped_counts
from nncore.utils.layers import filter_view


def _channel_rows(module: nn.Module, mask: torch.Tensor) -> torch.Tensor:
    view = filter_view(module, mask)
    return view.reshape(view.shape[0], -1) if view.dim() > 1 else view.reshape(-1, 1)


def _pruned_channels(module: nn.Module, entry: dict[str, Any]) -> np.ndarray | None:
    """Boolean vector of the whole channels ``entry`` prunes; ``None`` when the mask is fine-grained."""
    rows = _channel_rows(module, entry["weight"])
    zero, one = (rows == 0).all(dim=1), (rows != 0).all(dim=1)
    if not bool((zero | one).all()):
        return None
    return zero.cpu().numpy()


def _keep(module: nn.Module, entry: dict[str, Any], channels: np.ndarray) -> None:
    """Un-prune ``channels`` (indices) of the masks in ``entry`` (weight and bias)."""
    if len(channels) == 0:
        return
    index = torch.as_tensor(channels, dtype=torch.long)
    filter_view(module, entry["weight"])[index] = 1
    if entry.get("bias") is not None:
        entry["bias"][index] = 1


def _align_groups(modules: dict[str, nn.Module], masks: MaskDict, counts: dict[str, int]) -> bool:
    changed = False
    for name, groups in counts.items():
        entry = masks.get(name)
        pruned = None if entry is None or groups <= 1 else _pruned_channels(modules[name], entry)
        if pruned is None or len(pruned) % groups:
            continue
        per_group = [np.flatnonzero(part) + start for start, part in
                     zip(range(0, len(pruned), len(pruned) // groups), np.split(pruned, groups))]
        fewest = min(len(indices) for indices in per_group)
        extra = np.concatenate([indices[fewest:] for indices in per_group])
        if len(extra):
            _keep(modules[name], entry, extra)
            changed = True
    return changed


def _share_channels(modules: dict[str, nn.Module], masks: MaskDict, analysis: Analysis) -> bool:
    """A channel class is pruned only if every layer output carrying it is masked and prunes it."""
    outputs = analysis.layer_slots("out")
    carriers = {**analysis.layer_slots("channels"), **outputs}
    keep_roots: set[int] = set()
    pruned_of: dict[str, np.ndarray | None] = {}
    for name, roots in carriers.items():
        entry = masks.get(name)
        pruned = None if entry is None or name not in modules else _pruned_channels(modules[name], entry)
        pruned_of[name] = pruned
        if name not in outputs:
            continue
        if pruned is None or len(pruned) != len(roots):
            keep_roots.update(roots.tolist())
        else:
            keep_roots.update(roots[~pruned].tolist())
    changed = False
    for name, roots in carriers.items():
        pruned = pruned_of[name]
        if pruned is None or len(pruned) != len(roots):
            continue
        restore = np.flatnonzero(pruned & np.isin(roots, list(keep_roots)))
        if len(restore):
            _keep(modules[name], masks[name], restore)
            changed = True
    return changed


def _pad_concatenations(modules: dict[str, nn.Module], masks: MaskDict, sets: list[set[str]]) -> None:
    for group in sets:
        if not any(name in masks for name in group):
            continue
        for name in sorted(group - set(masks)):
            module = modules[name]
            bias = getattr(module, "bias", None)
            masks[name] = {"weight": torch.ones_like(module.weight.detach()),
                           "bias": torch.ones_like(bias.detach()) if isinstance(bias, torch.Tensor) else None}


def fix_mask_conflict(masks: str | os.PathLike | MaskDict, model: nn.Module | None = None, dummy_input: Any = None,
                      traced: Any = None) -> MaskDict:
    """Masks made consistent across coupled layers (NNI's ``fix_mask_conflict``; see the module doc).

    :param masks: a mask file written by ``export_model`` (loaded safely) or a mask dict; a dict
        given is not modified.
    :param model: the model the masks belong to (run once, in eval mode; not modified).
    :param dummy_input: an input of the model (tensor, tuple of inputs, dict of keyword inputs).
    :param traced: NNI's torch.jit trace; not used by nncore (an error says so).
    :returns: a new mask dict ``{name: {'weight': mask, 'bias': mask or None}}``.
    :raises ConfigError: no model or dummy_input, or ``traced`` given.
    :raises ArtifactError: not a mask file, or masks that do not fit ``model``.
    """
    _check_arguments("fix_mask_conflict", model, dummy_input, traced, "traced")
    loaded, _ = read_mask_file(masks)
    read_masks(model, loaded)
    fixed: MaskDict = {name: {key: (None if value is None else value.detach().clone()) for key, value in entry.items()}
                       for name, entry in loaded.items()}
    modules = dict(model.named_modules())
    was_training = model.training
    model.eval()
    try:
        analysis = Analysis(model, dummy_input)
    finally:
        model.train(was_training)
    counts = grouped_counts(analysis)
    while _align_groups(modules, fixed, counts) | _share_channels(modules, fixed, analysis):
        pass
    _pad_concatenations(modules, fixed, concatenated_sets(model, dummy_input))
    return fixed
