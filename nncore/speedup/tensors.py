"""The tensors inside a value (a tensor, or lists, tuples and dicts of them): the one walk that capture,
the dry run and the engine share."""
from __future__ import annotations

from typing import Any

import torch


def flat_tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in ``value``, depth first."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in flat_tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in flat_tensors(item)]
    return []
