"""The quantizer base: config keys, the wrapper that runs the quantize_* hooks, step and export.

Self-contained on purpose (the generic parts are meant to move into the core later).

Config keys common to every quantizer (NNI's names): ``quant_types`` (a list of ``'weight'``,
``'input'``, ``'output'``) and ``quant_bits`` (an int in 1..32 for every type, or a dict keyed by
the types listed in ``quant_types``).
"""
from __future__ import annotations

import copy
from typing import Any, Callable, ClassVar, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from nncore.artifacts import atomic_write, save_torch
from nncore.compressor import Quantizer, set_submodule, onnx_export_bytes
from nncore.config import LayerConfig
from nncore.errors import ConfigError, NncoreError, PluginError
from nncore.hookspecs import hookimpl
from nncore.utils.batchnorm import batchnorm_factor, fold_batchnorm

QUANT_TYPES = ("weight", "input", "output")
MAX_BITS = 32


def quant_config_schema(
    quant_types: Sequence[str] = QUANT_TYPES,
    default_bits: int = 8,
    max_bits: int = MAX_BITS,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``config_schema`` of a quantizer: ``quant_types`` (required), ``quant_bits`` and ``extra``.

    ``quant_bits`` is an int or a dict; JSON Schema applies ``minimum``/``maximum`` to the int
    form only and ``propertyNames``/``additionalProperties`` to the dict form only, so each
    violation gets a precise message (``config_list[0].quant_bits.weight: 0 is less than ...``).
    """
    bits = {"type": "integer", "minimum": 1, "maximum": max_bits}
    properties = {
        "quant_types": {
            "type": "array", "items": {"enum": list(quant_types)}, "minItems": 1, "uniqueItems": True,
            "description": "What to quantize: the layer's weight, its (first) input, its output.",
        },
        "quant_bits": {
            "type": ["integer", "object"], "minimum": 1, "maximum": max_bits,
            "propertyNames": {"enum": list(QUANT_TYPES)}, "additionalProperties": bits,
            "default": default_bits,
            "description": "Bits of every quantized type, or a dict {'weight': 8, 'output': 4}.",
        },
        **(extra or {}),
    }
    return {"properties": properties, "required": ["quant_types"]}


def bits_of(config: LayerConfig | dict[str, Any], quant_type: str) -> int:
    """The bits of ``quant_type`` in a (validated) layer config."""
    bits = config["quant_bits"]
    return bits if isinstance(bits, int) else bits[quant_type]


def quant_bits_errors(config_list: list[dict[str, Any]]) -> list[str]:
    """Cross-key problems: a ``quant_bits`` dict that names a type not in ``quant_types``,
    or leaves one of them without bits."""
    errors = []
    for index, entry in enumerate(config_list):
        bits, types = entry.get("quant_bits"), entry.get("quant_types")
        if entry.get("exclude") or not isinstance(bits, dict) or types is None:
            continue
        for key in bits:
            if key not in types:
                errors.append(f"config_list[{index}].quant_bits.{key}: {key!r} is not in quant_types {types}")
        for key in types:
            if key not in bits:
                errors.append(f"config_list[{index}].quant_bits: no bits for {key!r}, which is in quant_types")
    return errors


def call_with_parameters(
    module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, args: tuple, kwargs: dict[str, Any]
) -> Any:
    """``module(*args, **kwargs)`` computed with ``weight`` and ``bias`` in place of its own."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and len(args) == 1 and not kwargs:
        return module._conv_forward(args[0], weight, bias)
    if isinstance(module, nn.Linear) and len(args) == 1 and not kwargs:
        return F.linear(args[0], weight, bias)
    return functional_call(module, {"weight": weight, "bias": bias}, args, kwargs)


class QuantizerModuleWrapper(nn.Module):
    """Stands in for a quantized layer: the original module plus its quantization state.

    ``forward`` quantizes the input (``quantize_input`` hook), computes the layer with the
    quantized weight (``quantize_weight`` hook; the float weight stays the trainable parameter
    and the hooks pass gradients with a straight-through estimator), then quantizes the output
    (``quantize_output`` hook). With a folded BatchNorm (:meth:`fold_batchnorm`), the layer
    computes ``bn(layer(x))`` with the BatchNorm folded into the weight before quantization.

    :ivar module: the original module (restored as-is by ``unwrap_model``).
    :ivar name: the module's name in the model.
    :ivar config: its resolved :class:`~nncore.config.LayerConfig`.
    :ivar bits: ``{quant type: bits}`` for the types in ``config['quant_types']``.
    :ivar weight_scale, weight_zero_point: buffers, the weight's quantization parameters
        (one value, or one per output channel).
    :ivar tracked_min_input, tracked_max_input, tracked_min_output, tracked_max_output:
        buffers, the activation ranges the algorithm tracks.
    """

    def __init__(self, module: nn.Module, name: str, config: LayerConfig, quantizer: BaseQuantizer):
        super().__init__()
        self.module = module
        self.name = name
        self.config = config
        self.quantizer = quantizer
        self.bits = {kind: bits_of(config, kind) for kind in config["quant_types"]}
        self.bn: nn.Module | None = None
        self.bn_name: str | None = None
        device = module.weight.device
        if "weight" in self.bits:
            self.register_buffer("weight_scale", torch.ones(1, device=device))
            self.register_buffer("weight_zero_point", torch.zeros(1, device=device))
        for kind in ("input", "output"):
            if kind in self.bits:
                self.register_buffer(f"tracked_min_{kind}", torch.zeros((), device=device))
                self.register_buffer(f"tracked_max_{kind}", torch.zeros((), device=device))
        self.register_buffer("tracked_batches", torch.zeros((), dtype=torch.long, device=device))

    # -- forward -----------------------------------------------------------------------------

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        hook = self.quantizer.hook
        if "input" in self.bits and args:
            args = (self._ask(hook.quantize_input, "input", input=args[0]), *args[1:])
        if "weight" in self.bits or self.bn is not None:
            weight, bias = self.effective_parameters(args[0] if args else None)
            if "weight" in self.bits:
                weight = self._ask(hook.quantize_weight, "weight", weight=weight)
            output = call_with_parameters(self.module, weight, bias, args, kwargs)
        else:
            output = self.module(*args, **kwargs)
        if "output" in self.bits:
            output = self._ask(hook.quantize_output, "output", output=output)
        if self.training:
            self.tracked_batches += 1
        return output

    def _ask(self, hook: Callable[..., Any], kind: str, **tensor: torch.Tensor) -> torch.Tensor:
        result = hook(compressor=self.quantizer, wrapper=self, **tensor)
        if result is None:
            raise PluginError(f"no quantize_{kind} implementation answered for layer {self.name!r} "
                              f"of {type(self.quantizer).__name__}")
        return result

    def effective_parameters(self, x: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The float weight and bias the layer computes with (BatchNorm folded in, if any).

        While training, the BatchNorm is folded with the statistics of the current batch
        (computed, with gradients, by a float pass of the layer on ``x``, which also updates
        its running statistics), as in Jacob et al.; in eval mode with its running statistics.
        """
        weight, bias = self.module.weight, getattr(self.module, "bias", None)
        if self.bn is None:
            return weight, bias
        if self.training and x is not None:
            y = self.module(x)
            with torch.no_grad():
                self.bn(y)
            dims = [d for d in range(y.dim()) if d != 1]
            mean, var = y.mean(dim=dims), y.var(dim=dims, unbiased=False)
            return fold_batchnorm(weight, bias, self.bn, mean, var)
        return fold_batchnorm(weight, bias, self.bn)

    # -- BatchNorm folding -------------------------------------------------------------------

    def fold_batchnorm(self, bn: nn.Module, bn_name: str) -> None:
        """Compute ``bn(layer(x))`` with ``bn`` folded into the weight (the caller removes
        ``bn`` from the model; :meth:`original_modules` gives it back)."""
        self.bn, self.bn_name = bn, bn_name

    # -- what export needs -------------------------------------------------------------------

    @torch.no_grad()
    def quantized_parameters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight and bias as the layer computes with them in eval mode (quantized, folded)."""
        was_training = self.training
        self.eval()
        try:
            weight, bias = self.effective_parameters(None)
            if "weight" in self.bits:
                weight = self._ask(self.quantizer.hook.quantize_weight, "weight", weight=weight)
        finally:
            self.train(was_training)
        return weight.detach().clone(), None if bias is None else bias.detach().clone()

    def original_modules(self) -> dict[str, nn.Module]:
        """Copies of the original modules (the layer, and a folded BatchNorm) by model name,
        holding the quantized weight values: ``bn(layer(x))`` computes what the wrapper does."""
        weight, _ = self.quantized_parameters()
        layer = copy.deepcopy(self.module)
        modules = {self.name: layer}
        if self.bn is not None:
            weight = weight / batchnorm_factor(self.bn, self.bn.running_var).reshape(-1, *([1] * (weight.dim() - 1)))
            modules[self.bn_name] = copy.deepcopy(self.bn)
        layer.weight.data.copy_(weight)
        return modules

    def inference_modules(self) -> dict[str, nn.Module]:
        """Copies of the modules for deployment, by model name: the layer with its quantized
        (and BatchNorm-folded) weight and bias; a folded BatchNorm becomes ``nn.Identity``."""
        weight, bias = self.quantized_parameters()
        layer = copy.deepcopy(self.module)
        layer.weight.data.copy_(weight)
        modules: dict[str, nn.Module] = {self.name: layer}
        if self.bn is not None:
            layer.bias = nn.Parameter(bias)
            modules[self.bn_name] = nn.Identity()
        return modules

    def calibration(self) -> dict[str, Any]:
        """This layer's entry of the calibration config (NNI's layout)."""
        entry: dict[str, Any] = {}
        if "weight" in self.bits:
            weight, _ = self.quantized_parameters()
            entry.update(
                weight_bits=self.bits["weight"],
                weight_scale=self.weight_scale.detach().cpu().clone(),
                weight_zero_point=self.weight_zero_point.detach().cpu().clone(),
                min_weight=float(weight.min()),
                max_weight=float(weight.max()),
            )
        for kind in ("input", "output"):
            if kind in self.bits:
                entry[f"{kind}_bits"] = self.bits[kind]
                entry[f"tracked_min_{kind}"] = float(getattr(self, f"tracked_min_{kind}"))
                entry[f"tracked_max_{kind}"] = float(getattr(self, f"tracked_max_{kind}"))
        if self.bn is not None:
            entry["folded_batchnorm"] = self.bn_name
        return entry

    def extra_repr(self) -> str:
        folded = f", folded_batchnorm={self.bn_name!r}" if self.bn is not None else ""
        return f"name={self.name!r}, bits={self.bits}{folded}"


class BaseQuantizer(Quantizer):
    """Base of the built-in quantizers: wraps layers in :class:`QuantizerModuleWrapper`.

    :param model: the model to quantize.
    :param config_list: ``quant_types``, ``quant_bits`` and the algorithm's own keys.
    :param optimizer: optional; if given, :meth:`step` is called after each ``optimizer.step()``
        (as NNI does), and algorithms with learnable quantization parameters (LSQ) add them to it.
    :param dummy_input: optional example input (used by algorithms that need the graph, e.g.
        QAT's BatchNorm folding).
    :param plugins: extra hook implementations (see :mod:`nncore.hookspecs`).
    """

    default_op_types: ClassVar[tuple[str, ...]] = ("Conv1d", "Conv2d", "Linear")
    config_schema: ClassVar[dict[str, Any]] = quant_config_schema()

    def __init__(
        self,
        model: nn.Module,
        config_list: Sequence[dict[str, Any]],
        optimizer: torch.optim.Optimizer | None = None,
        dummy_input: Any = None,
        *,
        plugins: Iterable[Any] = (),
    ):
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}",
                              header="invalid argument")
        self.optimizer = optimizer
        self.dummy_input = dummy_input
        self.steps = 0
        self._optimizer_hook: Any = None
        super().__init__(model, config_list, plugins=plugins)

    @hookimpl(specname="validate_config")
    def check_quant_bits(self, config_list: list[dict[str, Any]]) -> list[str]:
        return quant_bits_errors(config_list)

    def make_wrapper(self, module: nn.Module, config: LayerConfig) -> QuantizerModuleWrapper:
        return QuantizerModuleWrapper(module, config.name, config, self)

    def compress(self) -> nn.Module:
        """Wrap the selected layers; from now on the model computes quantized."""
        self._wrap_model()
        self.after_wrap()
        if self.optimizer is not None:
            self._optimizer_hook = self.optimizer.register_step_post_hook(lambda *_: self.step())
        return self.bound_model

    def after_wrap(self) -> None:
        """Called once the layers are wrapped (algorithms add their state here)."""

    def step(self) -> None:
        """Count a finished mini-batch and broadcast the ``step`` hook."""
        self.steps += 1
        super().step()

    def unwrap_model(self) -> nn.Module:
        """Put the original modules back (folded BatchNorms too); the float weights stay."""
        if self._optimizer_hook is not None:
            self._optimizer_hook.remove()
            self._optimizer_hook = None
        for wrapper in self.wrappers.values():
            if wrapper.bn is not None:
                set_submodule(self.bound_model, wrapper.bn_name, wrapper.bn)
        return super().unwrap_model()

    # -- export ------------------------------------------------------------------------------

    def _require_wrapped(self, what: str) -> None:
        if not self.wrappers:
            raise NncoreError(f"{type(self).__name__}.{what}: call compress() first")

    def clean_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state_dict under the original model's keys, weights holding their quantized values."""
        self._require_wrapped("clean_state_dict")
        state: dict[str, torch.Tensor] = {}
        for key, value in self.bound_model.state_dict().items():
            owner = next((name for name in self.wrappers if key.startswith(name + ".")), None)
            if owner is None:
                state[key] = value.detach().clone()
            elif f"{owner}." + "module.weight" == key:
                for name, module in self.wrappers[owner].original_modules().items():
                    state.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
        return state

    def calibration_config(self) -> dict[str, dict[str, Any]]:
        """``{layer name: {'weight_bits', 'weight_scale', 'weight_zero_point', 'min_weight',
        'max_weight', 'input_bits', 'tracked_min_input', 'tracked_max_input', 'output_bits',
        'tracked_min_output', 'tracked_max_output'}}`` (keys of the types the layer quantizes;
        ``'folded_batchnorm'``: the BatchNorm whose effect the tracked output already includes)."""
        self._require_wrapped("calibration_config")
        return {name: wrapper.calibration() for name, wrapper in self.wrappers.items()}

    def export_model(
        self,
        model_path: str,
        calibration_path: str | None = None,
        onnx_path: str | None = None,
        input_shape: Sequence[int] | None = None,
        device: torch.device | str | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Write the quantized weights, and optionally the calibration config and an ONNX model.

        Every file is produced in memory first and written atomically; the model stays wrapped.

        :param model_path: state_dict with the original model's keys, weights quantized.
        :param calibration_path: the calibration config (see :meth:`calibration_config`).
        :param onnx_path: ONNX export of the fake-quantized model (needs ``input_shape``).
        :param input_shape: shape of the dummy input for the ONNX export, e.g. ``[1, 1, 28, 28]``.
        :param device: device of the dummy input (default: the model's).
        :return: the calibration config.
        """
        self._require_wrapped("export_model")
        if onnx_path is not None and input_shape is None:
            raise ConfigError("export_model: onnx_path needs input_shape, e.g. [1, 3, 32, 32]", header="invalid argument")
        onnx_bytes = onnx_export_bytes(self.bound_model, input_shape, device) if onnx_path else None
        calibration = self.calibration_config()
        state = self.clean_state_dict()
        save_torch(state, model_path)
        if calibration_path is not None:
            save_torch(calibration, calibration_path)
        if onnx_path is not None:
            atomic_write(onnx_path, lambda handle: handle.write(onnx_bytes))
        return calibration

    def inference_model(self) -> nn.Module:
        """A plain copy of the model for deployment: quantized (BatchNorm-folded) weights, no wrappers.

        Its layer names match the keys of :meth:`calibration_config`; hand both to
        :func:`nncore.speedup.export_int8_onnx`.
        """
        self._require_wrapped("inference_model")
        return without_quantizer_wrappers(self.bound_model)


def without_quantizer_wrappers(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in which every quantizer wrapper is replaced by its
    :meth:`~QuantizerModuleWrapper.inference_modules` (``model`` itself is not touched)."""
    wrappers = [m for m in model.modules() if isinstance(m, QuantizerModuleWrapper)]
    replacements: dict[str, nn.Module] = {}
    for wrapper in wrappers:
        replacements.update(wrapper.inference_modules())
    plain = copy.deepcopy(model, memo={id(w): nn.Identity() for w in wrappers})
    for name, module in replacements.items():
        set_submodule(plain, name, module)
    return plain
