"""LsqQuantizer: learned step size quantization (Esser et al., ICLR 2020)."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn

from nncore.builtin_quantizers.functional import integer_range, ste, ste_round
from nncore.compressor import Quantizer, quant_config_schema
from nncore.hookspecs import hookimpl
from nncore.wrapper import QuantizerModuleWrapper


def lsq_quantize(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``round(clamp(x / s, qmin, qmax)) * s`` with the STE for the rounding and the step-size
    gradient scaled by ``1 / sqrt(numel * qmax)`` (the paper's gradient scale)."""
    grad_scale = 1.0 / (x.numel() * qmax) ** 0.5
    step = ste(step * grad_scale, step)
    return ste_round(torch.clamp(x / step, qmin, qmax)) * step


class LsqQuantizer(Quantizer):
    """Quantizes with a step size per quantized tensor that is learned by gradient descent.

    Weights are signed (``[-2^(b-1), 2^(b-1) - 1]``); an activation is unsigned (``[0, 2^b - 1]``)
    when the first batch it sees has no negative value, signed otherwise. Step sizes start at
    ``2 * mean|x| / sqrt(qmax)`` (weights at compress time, activations on the first training
    batch). They are parameters of the wrappers (``weight_step``, ``input_step``,
    ``output_step``): pass ``optimizer`` (they are added to it) or build the optimizer after
    ``compress()``.

    ``config_list`` keys: ``quant_types``, ``quant_bits``.
    """

    name: ClassVar[str] = "lsq"
    config_schema: ClassVar[dict[str, Any]] = quant_config_schema()

    def after_wrap(self) -> None:
        steps = []
        for wrapper in self.wrappers.values():
            device = wrapper.tracked_batches.device
            for kind in wrapper.bits:
                step = nn.Parameter(torch.ones((), device=device))
                wrapper.register_parameter(f"{kind}_step", step)
                wrapper.register_buffer(f"{kind}_signed", torch.tensor(kind == "weight", device=device))
                steps.append(step)
            if "weight" in wrapper.bits:
                self._initialize(wrapper, "weight", wrapper.module.weight, signed=True)
        if self.optimizer is not None and steps:
            self.optimizer.add_param_group({"params": steps})

    @staticmethod
    def _initialize(wrapper: QuantizerModuleWrapper, kind: str, x: torch.Tensor, signed: bool) -> None:
        getattr(wrapper, f"{kind}_signed").fill_(signed)
        _, qmax = integer_range(wrapper.bits[kind], signed)
        getattr(wrapper, f"{kind}_step").data.fill_(float(2 * x.detach().abs().mean() / qmax ** 0.5) or 1e-8)

    def _quantize(self, wrapper: QuantizerModuleWrapper, kind: str, x: torch.Tensor) -> torch.Tensor:
        if kind != "weight" and wrapper.training and int(wrapper.tracked_batches) == 0:
            self._initialize(wrapper, kind, x, signed=bool(x.detach().min() < 0))
        qmin, qmax = self._record(wrapper, kind)
        return lsq_quantize(x, getattr(wrapper, f"{kind}_step"), qmin, qmax)

    @staticmethod
    def _record(wrapper: QuantizerModuleWrapper, kind: str) -> tuple[int, int]:
        """Copy the current step size into the exported state (weight scale, tracked range)."""
        step = getattr(wrapper, f"{kind}_step").detach()
        qmin, qmax = integer_range(wrapper.bits[kind], bool(getattr(wrapper, f"{kind}_signed")))
        if kind == "weight":
            wrapper.weight_scale, wrapper.weight_zero_point = step.reshape(1).clone(), torch.zeros_like(step).reshape(1)
        else:
            getattr(wrapper, f"tracked_min_{kind}").copy_(qmin * step)
            getattr(wrapper, f"tracked_max_{kind}").copy_(qmax * step)
        return qmin, qmax

    @hookimpl(specname="step")
    def record_step_sizes(self) -> None:
        for wrapper in self.wrappers.values():
            for kind in wrapper.bits:
                self._record(wrapper, kind)

    @hookimpl
    def quantize_weight(self, wrapper: QuantizerModuleWrapper, weight: torch.Tensor) -> torch.Tensor:
        return self._quantize(wrapper, "weight", weight)

    @hookimpl
    def quantize_input(self, wrapper: QuantizerModuleWrapper, input: torch.Tensor) -> torch.Tensor:
        return self._quantize(wrapper, "input", input)

    @hookimpl
    def quantize_output(self, wrapper: QuantizerModuleWrapper, output: torch.Tensor) -> torch.Tensor:
        return self._quantize(wrapper, "output", output)


@hookimpl
def register_compressors() -> list[type]:
    return [LsqQuantizer]
