"""QAT_Quantizer: quantization-aware training (Jacob et al., CVPR 2018)."""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
import torch.nn as nn

from nncore.builtin_quantizers.functional import (
    affine_qparams,
    channel_view,
    fake_quantize,
    integer_range,
    symmetric_scale,
    tensor_range,
)
from nncore.compressor import Quantizer, quant_config_schema, set_submodule
from nncore.hookspecs import hookimpl
from nncore.utils.batchnorm import find_following_batchnorms
from nncore.wrapper import QuantizerModuleWrapper

WEIGHT_SCHEMES = ("per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric")


def quantize_weight_tensor(weight: torch.Tensor, bits: int, scheme: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fake-quantize ``weight`` with its own range; returns ``(weight_q, scale, zero_point)``.

    ``scheme``: per tensor or per output channel; affine (unsigned, ``[0, 2^b - 1]``) or
    symmetric (signed, ``[-(2^(b-1) - 1), 2^(b-1) - 1]``, zero point 0).
    """
    per_channel = scheme.startswith("per_channel")
    low, high = tensor_range(weight, per_channel)
    if scheme.endswith("symmetric"):
        scale = symmetric_scale(torch.maximum(low.abs(), high.abs()), bits)
        zero_point = torch.zeros_like(scale)
        qmax = (1 << (bits - 1)) - 1
        qmin = -qmax
    else:
        scale, zero_point = affine_qparams(low, high, bits)
        qmin, qmax = integer_range(bits, signed=False)
    if per_channel:
        quantized = fake_quantize(weight, channel_view(scale, weight), channel_view(zero_point, weight), qmin, qmax)
    else:
        quantized = fake_quantize(weight, scale, zero_point, qmin, qmax)
    return quantized, scale.reshape(-1), zero_point.reshape(-1)


def fold_batchnorms(quantizer: Quantizer, pairs: dict[str, str]) -> None:
    """Fold each BatchNorm of ``pairs`` (``{layer name: BatchNorm name}``, from
    :func:`~nncore.utils.batchnorm.find_following_batchnorms`) into the wrapped layer before it;
    the BatchNorm's place in the model becomes ``nn.Identity`` (``unwrap_model`` puts it back)."""
    for name, bn_name in pairs.items():
        quantizer.wrappers[name].fold_batchnorm(quantizer.bound_model.get_submodule(bn_name), bn_name)
        set_submodule(quantizer.bound_model, bn_name, nn.Identity())


class QAT_Quantizer(Quantizer):
    """Simulates integer inference while training (Jacob et al., 2018).

    Weights are fake-quantized with their current range (per tensor by default; set
    ``quant_scheme`` to ``'per_channel_affine'`` or ``'per_channel_symmetric'`` for one range per
    output channel). Inputs and outputs are fake-quantized (unsigned, affine) with ranges
    tracked by an exponential moving average (decay 0.99) over training batches; in eval mode
    the tracked ranges are used as they are. Gradients pass with the clipped straight-through
    estimator. Nothing is quantized before ``quant_start_step`` calls of :meth:`step` (the
    ranges are tracked from the first batch on).

    BatchNorm folding, as in NNI: pass ``dummy_input`` and every quantized layer whose output
    goes straight into a BatchNorm computes ``bn(layer(x))`` with the BatchNorm folded into the
    weight before quantization (batch statistics while training, running ones in eval mode).

    ``config_list`` keys: ``quant_types``, ``quant_bits``, ``quant_start_step`` (default 0),
    ``quant_scheme`` (weights; default ``'per_tensor_affine'``). Modules without weight (ReLU,
    ReLU6, pooling ...) may quantize their input and output, as in NNI's example
    ``{'quant_types': ['output'], 'quant_bits': 8, 'op_types': ['ReLU6']}``; their ranges go into
    the calibration config, and :func:`nncore.speedup.export_int8_onnx` uses them.

    >>> quantizer = QAT_Quantizer(model, [{"quant_types": ["weight", "input", "output"],
    ...                                    "quant_bits": 8, "op_types": ["default"]}], optimizer)
    >>> model = quantizer.compress()
    """

    name: ClassVar[str] = "qat"
    job_arguments: ClassVar[Mapping[str, str]] = {"dummy_input": "dummy_input"}
    aliases: ClassVar[tuple[str, ...]] = ("QATQuantizer",)
    ema_decay: ClassVar[float] = 0.99
    config_schema: ClassVar[dict[str, Any]] = quant_config_schema(extra={
        "quant_start_step": {"type": "integer", "minimum": 0, "default": 0,
                             "description": "Number of step() calls before quantization starts."},
        "quant_scheme": {"enum": list(WEIGHT_SCHEMES), "default": "per_tensor_affine",
                         "description": "How weights are quantized: per tensor or per channel, affine or symmetric."},
    })

    def compress(self) -> nn.Module:
        weighted = [c.name for c in self.layer_configs if "weight" in c["quant_types"]]
        dummy = self.dummy_input if isinstance(self.dummy_input, tuple) else (self.dummy_input,)
        self._batchnorms = find_following_batchnorms(self.bound_model, weighted, dummy) if self.dummy_input is not None else {}
        return super().compress()

    def after_wrap(self) -> None:
        fold_batchnorms(self, self._batchnorms)

    def quantizing(self, wrapper: QuantizerModuleWrapper) -> bool:
        """Whether ``quant_start_step`` has been reached for this layer."""
        return self.steps >= wrapper.config["quant_start_step"]

    @hookimpl
    def quantize_weight(self, wrapper: QuantizerModuleWrapper, weight: torch.Tensor) -> torch.Tensor:
        if not self.quantizing(wrapper):
            return weight
        quantized, scale, zero_point = quantize_weight_tensor(weight, wrapper.bits["weight"], wrapper.config["quant_scheme"])
        wrapper.weight_scale, wrapper.weight_zero_point = scale.detach(), zero_point.detach()
        return quantized

    def _quantize_activation(self, wrapper: QuantizerModuleWrapper, kind: str, x: torch.Tensor) -> torch.Tensor:
        low, high = getattr(wrapper, f"tracked_min_{kind}"), getattr(wrapper, f"tracked_max_{kind}")
        first = int(wrapper.tracked_batches) == 0
        if wrapper.training:
            current_low, current_high = x.detach().min(), x.detach().max()
            decay = 0.0 if first else self.ema_decay
            low.copy_(low * decay + (1 - decay) * current_low)
            high.copy_(high * decay + (1 - decay) * current_high)
        elif first:
            return x  # no range tracked yet
        if not self.quantizing(wrapper):
            return x
        bits = wrapper.bits[kind]
        scale, zero_point = affine_qparams(low, high, bits)
        return fake_quantize(x, scale, zero_point, *integer_range(bits, signed=False))

    @hookimpl
    def quantize_input(self, wrapper: QuantizerModuleWrapper, input: torch.Tensor) -> torch.Tensor:
        return self._quantize_activation(wrapper, "input", input)

    @hookimpl
    def quantize_output(self, wrapper: QuantizerModuleWrapper, output: torch.Tensor) -> torch.Tensor:
        return self._quantize_activation(wrapper, "output", output)


QATQuantizer = QAT_Quantizer


@hookimpl
def register_compressors() -> list[type]:
    return [QAT_Quantizer]
