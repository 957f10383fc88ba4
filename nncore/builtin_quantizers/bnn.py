"""BNNQuantizer: binarized weights and activations (Courbariaux et al., 2016)."""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from nncore.builtin_quantizers.functional import ste
from nncore.compressor import Quantizer, quant_config_schema
from nncore.hookspecs import hookimpl
from nncore.wrapper import QuantizerModuleWrapper


def binarize(x: torch.Tensor) -> torch.Tensor:
    """``sign(x)`` with ``sign(0) = +1``: every value becomes -1 or +1."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def binarize_activation(x: torch.Tensor) -> torch.Tensor:
    """``sign`` forward; backward the paper's ``hardtanh`` STE: gradient 1 where ``|x| <= 1``, else 0."""
    return ste(torch.clamp(x, -1.0, 1.0), binarize(x))


class BNNQuantizer(Quantizer):
    """Binarizes weights and/or activations to {-1, +1} with the straight-through estimator.

    After each :meth:`step` the real-valued weights are clipped to [-1, 1] (Algorithm 1 of the
    paper). ``config_list`` keys: ``quant_types``, ``quant_bits`` (must be 1, the default).
    """

    name: ClassVar[str] = "bnn"
    config_schema: ClassVar[dict[str, Any]] = quant_config_schema(default_bits=1, max_bits=1)

    @hookimpl
    def quantize_weight(self, wrapper: QuantizerModuleWrapper, weight: torch.Tensor) -> torch.Tensor:
        # {-1, +1} = scale * (q - zero_point) with q in {0, 1}
        wrapper.weight_scale = torch.full((1,), 2.0, device=weight.device)
        wrapper.weight_zero_point = torch.full((1,), 0.5, device=weight.device)
        return ste(weight, binarize(weight))

    def _binarize_activation(self, wrapper: QuantizerModuleWrapper, kind: str, x: torch.Tensor) -> torch.Tensor:
        getattr(wrapper, f"tracked_min_{kind}").fill_(-1.0)
        getattr(wrapper, f"tracked_max_{kind}").fill_(1.0)
        return binarize_activation(x)

    @hookimpl
    def quantize_input(self, wrapper: QuantizerModuleWrapper, input: torch.Tensor) -> torch.Tensor:
        return self._binarize_activation(wrapper, "input", input)

    @hookimpl
    def quantize_output(self, wrapper: QuantizerModuleWrapper, output: torch.Tensor) -> torch.Tensor:
        return self._binarize_activation(wrapper, "output", output)

    @hookimpl(specname="step")
    def clip_weights(self) -> None:
        with torch.no_grad():
            for wrapper in self.wrappers.values():
                if "weight" in wrapper.bits:
                    wrapper.module.weight.clamp_(-1.0, 1.0)


@hookimpl
def register_compressors() -> list[type]:
    return [BNNQuantizer]
