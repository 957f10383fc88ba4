"""ModuleWrapper: the real ``nn.Module`` that stands in for a compressed layer."""
from __future__ import annotations

import weakref
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from nncore.config import LayerConfig
from nncore.errors import PluginError


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
