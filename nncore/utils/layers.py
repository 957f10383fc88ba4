"""Which modules are prunable layers, and where their output channels are."""
from __future__ import annotations

import torch
from torch import nn


def is_hf_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is Hugging Face's ``Conv1D``: a linear layer whose weight is stored
    ``(in_features, out_features)`` (recognised by class name and ``nf``, without importing it)."""
    weight = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2
            and getattr(module, "nf", weight.shape[1]) == weight.shape[1])


def is_prunable_layer(module: nn.Module) -> bool:
    """Convolutions, ``Linear`` and HF ``Conv1D``: the layers whose output channels pruners remove."""
    return isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) or is_hf_conv1d(module)


def filter_view(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A weight-shaped ``tensor`` of ``module`` (weight, gradient, mask) with the filters
    (output channels / neurons) on dim 0: the transpose for HF ``Conv1D``, else as is."""
    return tensor.t() if is_hf_conv1d(module) else tensor
