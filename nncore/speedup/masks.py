"""Mask input: load safely, check against the model, apply to weights."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from nncore.artifacts import MaskDict, read_mask_file
from nncore.errors import ArtifactError
from nncore.wrapper import ModuleWrapper


def read_masks(model: nn.Module, masks_file_or_dict: str | os.PathLike | MaskDict, map_location: Any = None) -> MaskDict:
    """Load masks (``torch.load(weights_only=True)`` for files) and check every entry fits ``model``.

    :raises ArtifactError: not a mask file, or an entry names no module or has the wrong shape.
    """
    source = "masks" if isinstance(masks_file_or_dict, dict) else f"mask file {str(masks_file_or_dict)!r}"
    masks = read_mask_file(masks_file_or_dict, map_location)[0]
    modules = dict(model.named_modules())
    for name, entry in masks.items():
        module = modules.get(name)
        if module is None:
            raise ArtifactError(f"{source}: entry {name!r} names no module of {type(model).__name__}")
        if isinstance(module, ModuleWrapper):
            raise ArtifactError(f"{source}: {name!r} is still wrapped by the pruner; call pruner.unwrap_model() "
                                "before speedup")
        for key, mask in entry.items():
            param = getattr(module, key, None)
            if mask is None:
                continue
            if not isinstance(param, torch.Tensor):
                raise ArtifactError(f"{source}: entry {name!r} has a {key!r} mask but the module has no {key}")
            if tuple(mask.shape) != tuple(param.shape):
                raise ArtifactError(f"{source}: entry {name!r}: {key} mask has shape {tuple(mask.shape)}, "
                                    f"the module's {key} has shape {tuple(param.shape)}")
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: MaskDict) -> None:
    """Multiply every masked parameter (weight, bias, ``in_proj_weight`` ...) by its mask, in place."""
    modules = dict(model.named_modules())
    for name, entry in masks.items():
        module = modules[name]
        for key, mask in entry.items():
            if mask is not None:
                param = getattr(module, key)
                param.mul_(mask.to(device=param.device, dtype=param.dtype))
