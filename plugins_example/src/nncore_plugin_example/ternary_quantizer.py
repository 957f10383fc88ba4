"""TernaryQuantizer: ternary weights {-alpha, 0, +alpha} (Li & Liu, "Ternary Weight Networks", 2016)."""
from __future__ import annotations

from typing import Any, ClassVar

import torch

import nncore
from nncore.compressor import Quantizer, quant_config_schema

_schema = quant_config_schema(("weight",), default_bits=2, max_bits=2, extra={
    "threshold_factor": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.7,
                         "description": "delta = threshold_factor * mean|w|; smaller weights become 0."},
})


class TernaryQuantizer(Quantizer):
    """Each selected layer's weight becomes ``alpha * t`` with ``t`` in {-1, 0, +1}, per tensor:
    ``t = sign(w)`` where ``|w| > delta = threshold_factor * mean|w|``, else 0, and ``alpha`` is
    the mean of ``|w|`` over the kept weights (the paper's approximate solution). The float
    weight stays the trained parameter (straight-through gradient).

    ``config_list`` keys: ``quant_types`` (``['weight']``), ``quant_bits`` (2, the default),
    ``threshold_factor`` (default 0.7).
    """

    name: ClassVar[str] = "ternary"
    config_schema: ClassVar[dict[str, Any]] = _schema

    @nncore.hookimpl
    def quantize_weight(self, wrapper, weight: torch.Tensor) -> torch.Tensor:
        delta = wrapper.config["threshold_factor"] * weight.detach().abs().mean()
        kept = weight.detach().abs() > delta
        alpha = weight.detach().abs()[kept].mean() if kept.any() else weight.new_zeros(())
        ternary = torch.sign(weight.detach()) * kept * alpha
        wrapper.weight_scale = alpha.reshape(1).clone()  # value = scale * (q - 0), q in {-1, 0, 1}
        wrapper.weight_zero_point = torch.zeros_like(wrapper.weight_scale)
        return weight + (ternary - weight).detach()


@nncore.hookimpl
def register_compressors() -> list[type]:
    return [TernaryQuantizer]
