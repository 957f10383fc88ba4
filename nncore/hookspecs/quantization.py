"""Quantization hooks, called on a compressor's own plugin manager during forward."""
from __future__ import annotations

from typing import TYPE_CHECKING

from nncore.hookspecs import hookspec

if TYPE_CHECKING:
    import torch

    from nncore.compressor import Compressor
    from nncore.wrapper import ModuleWrapper


@hookspec(firstresult=True)
def quantize_weight(
    compressor: Compressor, wrapper: ModuleWrapper, weight: torch.Tensor
) -> torch.Tensor | None:
    """Return the (fake-)quantized weight the wrapped layer computes with.

    Stops at first non-None result.

    :param compressor: the quantizer asking.
    :param wrapper: the wrapped layer (its ``config`` holds ``quant_bits`` etc.).
    :param weight: the float weight, with gradients; return a tensor of the same shape.
    """


@hookspec(firstresult=True)
def quantize_input(
    compressor: Compressor, wrapper: ModuleWrapper, input: torch.Tensor
) -> torch.Tensor | None:
    """Return the (fake-)quantized input of the wrapped layer.

    Stops at first non-None result.

    :param compressor: the quantizer asking.
    :param wrapper: the wrapped layer.
    :param input: the first positional input of the layer's forward.
    """


@hookspec(firstresult=True)
def quantize_output(
    compressor: Compressor, wrapper: ModuleWrapper, output: torch.Tensor
) -> torch.Tensor | None:
    """Return the (fake-)quantized output of the wrapped layer.

    Stops at first non-None result.

    :param compressor: the quantizer asking.
    :param wrapper: the wrapped layer.
    :param output: the layer's output tensor.
    """
