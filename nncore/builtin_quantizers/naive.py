"""NaiveQuantizer: symmetric weight quantization to 8 bits, nothing else."""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from nncore.builtin_quantizers.qat import quantize_weight_tensor
from nncore.compressor import Quantizer, quant_config_schema
from nncore.hookspecs import hookimpl
from nncore.wrapper import QuantizerModuleWrapper

_schema = quant_config_schema(("weight",))
_schema["properties"]["quant_types"]["default"] = ["weight"]


class NaiveQuantizer(Quantizer):
    """Quantizes each selected layer's weight to ``quant_bits`` (default 8) signed levels:
    ``scale = max|w| / (2^(bits-1) - 1)``, round to nearest, straight-through gradient.

    ``config_list`` keys: ``quant_types`` (only ``['weight']``, the default), ``quant_bits``.

    >>> NaiveQuantizer(model, [{"op_types": ["default"]}]).compress()
    """

    name: ClassVar[str] = "naive"
    config_schema: ClassVar[dict[str, Any]] = {**_schema, "required": []}

    @hookimpl
    def quantize_weight(self, wrapper: QuantizerModuleWrapper, weight: torch.Tensor) -> torch.Tensor:
        quantized, scale, zero_point = quantize_weight_tensor(weight, wrapper.bits["weight"], "per_tensor_symmetric")
        wrapper.weight_scale, wrapper.weight_zero_point = scale.detach(), zero_point.detach()
        return quantized


@hookimpl
def register_compressors() -> list[type]:
    return [NaiveQuantizer]
