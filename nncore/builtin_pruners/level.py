"""LevelPruner: element-wise magnitude pruning of each selected layer."""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from nncore.compressor import Pruner
from nncore.config import FRACTION
from nncore.hookspecs import hookimpl
from nncore.wrapper import ModuleWrapper


def smallest_magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A mask that zeroes exactly ``int(sparsity * weight.numel())`` smallest ``|w|`` (rounded down, as NNI)."""
    mask = torch.ones_like(weight)
    count = int(sparsity * weight.numel())
    if count > 0:
        pruned = torch.topk(weight.detach().abs().flatten(), count, largest=False).indices
        mask.view(-1)[pruned] = 0
    return mask


class LevelPruner(Pruner):
    """Masks the smallest-magnitude weights of each selected layer (one-shot).

    ``config_list`` keys: ``sparsity`` (fraction of each layer's weights to prune).

    >>> pruner = LevelPruner(model, [{"sparsity": 0.8, "op_types": ["default"]}])
    >>> model = pruner.compress()
    """

    name: ClassVar[str] = "level"
    config_schema: ClassVar[dict[str, Any]] = {
        "properties": {"sparsity": {**FRACTION, "description": "Fraction of each layer's weights to prune."}},
        "required": ["sparsity"],
    }

    @hookimpl
    def calc_mask(self, wrapper: ModuleWrapper, sparsity: float) -> dict[str, torch.Tensor | None]:
        return {"weight_mask": smallest_magnitude_mask(wrapper.module.weight, sparsity), "bias_mask": None}


@hookimpl
def register_compressors() -> list[type]:
    return [LevelPruner]
