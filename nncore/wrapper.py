"""The real ``nn.Module`` s that stand in for compressed layers: :class:`ModuleWrapper` (pruning
masks) and :class:`QuantizerModuleWrapper` (quantization state, routed through the quantize_* hooks)."""
from __future__ import annotations

import copy
import weakref
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call
from torch.optim.optimizer import register_optimizer_step_post_hook

from nncore.config import LayerConfig
from nncore.errors import ConfigError, PluginError

if TYPE_CHECKING:
    from nncore.compressor import Quantizer


class ModuleWrapper(nn.Module):
    """Holds the original module and its pruning masks as buffers.

    Masked weights are zeroed in place when masks are set and again after every optimizer
    step (any optimizer, through one global post-step hook that knows every wrapper with
    masks, for as long as the wrapper exists), so the wrapped module runs its own, unchanged
    ``forward``: wrapping costs one Python call per layer.

    :ivar module: the original module object (restored as-is by ``unwrap_model``).
    :ivar name: the module's name in the model.
    :ivar config: its resolved :class:`LayerConfig`.
    :ivar weight_mask: buffer shaped like ``module.weight`` (1 keeps, 0 prunes).
    :ivar bias_mask: buffer shaped like ``module.bias``, or ``None``.
    :ivar mask_parameters: the parameters masked, by name relative to ``module`` (default
        ``("weight", "bias")``); each has a buffer ``<name with dots as _>_mask``, e.g.
        ``in_proj_weight_mask`` of an ``nn.MultiheadAttention``.
    """

    def __init__(self, module: nn.Module, name: str, config: LayerConfig,
                 mask_parameters: Sequence[str] = ("weight", "bias")):
        super().__init__()
        self.module = module
        self.name = name
        self.config = config
        self.mask_parameters = tuple(mask_parameters)
        for parameter in self.mask_parameters:
            value = module_parameter(module, parameter)
            self.register_buffer(mask_buffer_name(parameter), None if value is None else torch.ones_like(value))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        keep_masks_through_optimizer_steps(self)  # a deep copy or unpickled model keeps its masks too

    def set_masks(self, weight_mask: torch.Tensor, bias_mask: torch.Tensor | None = None) -> None:
        """Replace the masks (values are copied) and zero the masked weights."""
        self.set_parameter_masks({"weight": weight_mask} if bias_mask is None else {"weight": weight_mask, "bias": bias_mask})

    def parameter_masks(self) -> dict[str, torch.Tensor | None]:
        """``{parameter name: mask}`` for every parameter this wrapper masks (``None``: the module has
        no such parameter, e.g. no bias). Names are relative to the module (``out_proj.weight``)."""
        return {parameter: getattr(self, mask_buffer_name(parameter)) for parameter in self.mask_parameters}

    def set_parameter_masks(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Replace the masks of the named parameters (values are copied) and zero the masked values."""
        current = self.parameter_masks()
        for parameter, mask in masks.items():
            if parameter not in current:
                raise PluginError(f"a {parameter} mask was given for {self.name!r}, whose wrapper masks only "
                                  f"{', '.join(self.mask_parameters)}")
            if current[parameter] is None:
                raise PluginError(f"a {parameter} mask was given for {self.name!r}, which has no {parameter}")
            self._copy_mask(mask_buffer_name(parameter), mask)
        self.apply_masks()
        keep_masks_through_optimizer_steps(self)

    def _copy_mask(self, attribute: str, mask: torch.Tensor) -> None:
        current = getattr(self, attribute)
        if not isinstance(mask, torch.Tensor) or mask.shape != current.shape:
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise PluginError(f"{attribute} for {self.name!r} must have shape {tuple(current.shape)}, got {shape}")
        current.copy_(mask)

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero the masked entries of the weight (and bias, and any other masked parameter) in place."""
        for parameter, mask in self.parameter_masks().items():
            if mask is not None:
                module_parameter(self.module, parameter).mul_(mask)

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def mask_buffer_name(parameter: str) -> str:
    """The wrapper's buffer that masks ``parameter``: ``weight_mask``, ``out_proj_weight_mask``."""
    return parameter.replace(".", "_") + "_mask"


def module_parameter(module: nn.Module, parameter: str) -> torch.Tensor | None:
    """The tensor called ``parameter`` (dotted: ``out_proj.weight``) in ``module``, or ``None``."""
    owner, _, attribute = parameter.rpartition(".")
    try:
        target = module.get_submodule(owner) if owner else module
    except AttributeError:
        return None
    value = getattr(target, attribute, None)
    return value if isinstance(value, torch.Tensor) else None


# Masked weights must stay zero whatever the optimizer does (momentum, Adam, weight decay):
# one global post-step hook re-applies the masks of every wrapper that has masks. Wrappers,
# not compressors, are tracked: a model keeps its masks even when the pruner object is dropped.
_MASKED_WRAPPERS: "weakref.WeakSet[ModuleWrapper]" = weakref.WeakSet()
_step_hook_handle: Any = None


def _reapply_masks_after_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    for wrapper in list(_MASKED_WRAPPERS):
        wrapper.apply_masks()


def keep_masks_through_optimizer_steps(wrapper: ModuleWrapper) -> None:
    """Re-apply ``wrapper``'s masks after every optimizer step, for as long as it exists."""
    global _step_hook_handle
    if _step_hook_handle is None:
        _step_hook_handle = register_optimizer_step_post_hook(_reapply_masks_after_step)
    _MASKED_WRAPPERS.add(wrapper)


def release_masks(wrapper: ModuleWrapper) -> None:
    """Stop re-applying ``wrapper``'s masks (the module was unwrapped)."""
    _MASKED_WRAPPERS.discard(wrapper)


# -- quantization --------------------------------------------------------------------------------

def batchnorm_factor(bn: nn.Module, var: torch.Tensor) -> torch.Tensor:
    """Per-channel ``gamma / sqrt(var + eps)``."""
    gamma = bn.weight if bn.weight is not None else torch.ones_like(var)
    return gamma / torch.sqrt(var + bn.eps)


def fold_batchnorm(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bn: nn.Module,
    mean: torch.Tensor | None = None,
    var: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the layer that computes ``bn(layer(x))`` in one step.

    ``mean`` and ``var`` default to the BatchNorm's running statistics.
    """
    mean = bn.running_mean if mean is None else mean
    var = bn.running_var if var is None else var
    factor = batchnorm_factor(bn, var)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(mean)
    bias = torch.zeros_like(mean) if bias is None else bias
    folded_weight = weight * factor.reshape(-1, *([1] * (weight.dim() - 1)))
    return folded_weight, beta + (bias - mean) * factor


def call_with_parameters(
    module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, args: tuple, kwargs: dict[str, Any]
) -> Any:
    """``module(*args, **kwargs)`` computed with ``weight`` and ``bias`` in place of its own."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and len(args) == 1 and not kwargs:
        return module._conv_forward(args[0], weight, bias)
    if isinstance(module, nn.Linear) and len(args) == 1 and not kwargs:
        return F.linear(args[0], weight, bias)
    return functional_call(module, {"weight": weight, "bias": bias}, args, kwargs)


def has_weight(module: nn.Module) -> bool:
    """Whether ``module`` has a ``weight`` parameter (Conv, Linear, ...; not ReLU or pooling)."""
    return isinstance(getattr(module, "weight", None), nn.Parameter)


class QuantizerModuleWrapper(nn.Module):
    """Stands in for a quantized layer: the original module plus its quantization state.

    ``forward`` quantizes the input (``quantize_input`` hook), computes the layer with the
    quantized weight (``quantize_weight`` hook; the float weight stays the trainable parameter
    and the hooks pass gradients with a straight-through estimator), then quantizes the output
    (``quantize_output`` hook). With a folded BatchNorm (:meth:`fold_batchnorm`), the layer
    computes ``bn(layer(x))`` with the BatchNorm folded into the weight before quantization.
    A module without weight (ReLU, ReLU6, pooling, ...) may quantize its input and output.

    :ivar module: the original module (restored as-is by ``unwrap_model``).
    :ivar name: the module's name in the model.
    :ivar config: its resolved :class:`~nncore.config.LayerConfig`.
    :ivar bits: ``{quant type: bits}`` for the types in ``config['quant_types']``.
    :ivar weight_scale, weight_zero_point: buffers, the weight's quantization parameters
        (one value, or one per output channel).
    :ivar tracked_min_input, tracked_max_input, tracked_min_output, tracked_max_output:
        buffers, the activation ranges the algorithm tracks.
    """

    def __init__(self, module: nn.Module, name: str, config: LayerConfig, quantizer: Quantizer,
                 device: torch.device | str = "cpu"):
        super().__init__()
        self.module = module
        self.name = name
        self.config = config
        self.quantizer = quantizer
        self.bits = {kind: bits_of(config, kind) for kind in config["quant_types"]}
        self.bn: nn.Module | None = None
        self.bn_name: str | None = None
        if "weight" in self.bits:
            self.register_buffer("weight_scale", torch.ones(1, device=device))
            self.register_buffer("weight_zero_point", torch.zeros(1, device=device))
        for kind in ("input", "output"):
            if kind in self.bits:
                self.register_buffer(f"tracked_min_{kind}", torch.zeros((), device=device))
                self.register_buffer(f"tracked_max_{kind}", torch.zeros((), device=device))
        self.register_buffer("tracked_batches", torch.zeros((), dtype=torch.long, device=device))

    @property
    def weight(self) -> torch.Tensor:
        """The wrapped module's (float) weight, for code that reads ``layer.weight`` of a wrapped layer."""
        return self.module.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The wrapped module's bias."""
        return self.module.bias

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
        (value,) = tensor.values()
        if not isinstance(value, torch.Tensor):
            raise ConfigError(f"config_list[{self.config.index}]: cannot quantize the {kind} of {self.name!r} "
                              f"({self.config.op_type}): it is a {type(value).__name__}, not a tensor",
                              header="invalid quant_types")
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
        layer = copy.deepcopy(self.module)
        modules = {self.name: layer}
        if not has_weight(layer):
            return modules
        weight, _ = self.quantized_parameters()
        if self.bn is not None:
            weight = weight / batchnorm_factor(self.bn, self.bn.running_var).reshape(-1, *([1] * (weight.dim() - 1)))
            modules[self.bn_name] = copy.deepcopy(self.bn)
        layer.weight.data.copy_(weight)
        return modules

    def inference_modules(self) -> dict[str, nn.Module]:
        """Copies of the modules for deployment, by model name: the layer with its quantized
        (and BatchNorm-folded) weight and bias; a folded BatchNorm becomes ``nn.Identity``."""
        layer = copy.deepcopy(self.module)
        modules: dict[str, nn.Module] = {self.name: layer}
        if not has_weight(layer):
            return modules
        weight, bias = self.quantized_parameters()
        layer.weight.data.copy_(weight)
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


def bits_of(config: LayerConfig | dict[str, Any], quant_type: str) -> int:
    """The bits of ``quant_type`` in a (validated) layer config."""
    bits = config["quant_bits"]
    return bits if isinstance(bits, int) else bits[quant_type]
