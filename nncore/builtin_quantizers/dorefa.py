"""DoReFaQuantizer: DoReFa-Net weight quantization (Zhou et al., 2016)."""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from nncore.builtin_quantizers.functional import ste_round
from nncore.compressor import Quantizer, quant_config_schema
from nncore.hookspecs import hookimpl
from nncore.wrapper import QuantizerModuleWrapper


def dorefa_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """``2 * quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1`` with ``2^bits`` levels in [-1, 1].

    ``quantize_k`` rounds to ``k / (2^bits - 1)`` with a straight-through gradient; the
    gradient flows through ``tanh`` and the normalization, as in the paper.
    """
    levels = (1 << bits) - 1
    squashed = torch.tanh(weight)
    normalized = squashed / (2 * squashed.abs().max().clamp(min=1e-12)) + 0.5
    return 2 * ste_round(normalized * levels) / levels - 1


class DoReFaQuantizer(Quantizer):
    """Quantizes weights to ``2^bits`` evenly spaced values in [-1, 1] (DoReFa-Net).

    ``config_list`` keys: ``quant_types`` (``['weight']``), ``quant_bits``.
    """

    name: ClassVar[str] = "dorefa"
    config_schema: ClassVar[dict[str, Any]] = quant_config_schema(("weight",))

    @hookimpl
    def quantize_weight(self, wrapper: QuantizerModuleWrapper, weight: torch.Tensor) -> torch.Tensor:
        bits = wrapper.bits["weight"]
        levels = (1 << bits) - 1
        # value = scale * (q - zero_point) with q in [0, levels]: scale 2 / levels, zero point levels / 2
        wrapper.weight_scale = torch.full((1,), 2.0 / levels, device=weight.device)
        wrapper.weight_zero_point = torch.full((1,), levels / 2, device=weight.device)
        return dorefa_weight(weight, bits)


@hookimpl
def register_compressors() -> list[type]:
    return [DoReFaQuantizer]
