"""RandomPruner: masks a random fraction of each selected layer's weights (a control baseline)."""
from __future__ import annotations

from typing import Any, ClassVar

import torch

import nncore
from nncore.compressor import Pruner
from nncore.config import FRACTION


class RandomPruner(Pruner):
    """Prunes exactly ``round(sparsity * n)`` weights of each layer, chosen uniformly at random.

    ``config_list`` keys: ``sparsity``; ``seed`` (optional int) makes the choice repeatable.
    """

    name: ClassVar[str] = "random"
    config_schema: ClassVar[dict[str, Any]] = {
        "properties": {"sparsity": FRACTION, "seed": {"type": "integer", "minimum": 0, "default": 0}},
        "required": ["sparsity"],
    }

    @nncore.hookimpl
    def calc_mask(self, wrapper, sparsity: float) -> dict[str, torch.Tensor | None]:
        weight = wrapper.module.weight
        generator = torch.Generator().manual_seed(wrapper.config["seed"])
        count = round(sparsity * weight.numel())
        order = torch.randperm(weight.numel(), generator=generator)
        mask = torch.ones(weight.numel(), dtype=weight.dtype)
        mask[order[:count]] = 0
        return {"weight_mask": mask.view_as(weight).to(weight.device), "bias_mask": None}


@nncore.hookimpl
def register_compressors() -> list[type]:
    return [RandomPruner]
