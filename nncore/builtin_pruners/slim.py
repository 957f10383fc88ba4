"""SlimPruner: network slimming (Liu et al., 2017) by a global ranking of BatchNorm scales.

Train with an L1 penalty on the BatchNorm scaling factors (``gamma``) first, e.g. with
:func:`slim_regularization` added to the loss or :func:`add_slim_subgradient` after
``loss.backward()``; then :class:`SlimPruner` masks the channels with the smallest ``|gamma|``
over all selected BatchNorm2d layers together (one threshold for the whole model).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn

from nncore.compressor import Pruner
from nncore.config import FRACTION
from nncore.config.schema import same_value_errors
from nncore.errors import ConfigError
from nncore.hookspecs import hookimpl
from nncore.wrapper import ModuleWrapper


def _check_penalty(penalty: Any) -> None:
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or penalty < 0:
        raise ConfigError(f"penalty must be a number >= 0, got {penalty!r}", header="invalid argument")


def _batchnorm_scales(model: nn.Module) -> list[nn.Parameter]:
    return [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.weight is not None]


def slim_regularization(model: nn.Module, penalty: float = 1e-4) -> torch.Tensor:
    """The sparsity-training term ``penalty * sum |gamma|`` over every BatchNorm2d of ``model``.

    Add it to the loss before ``backward()``:
    ``loss = criterion(model(x), y) + slim_regularization(model, 1e-4)``.
    """
    _check_penalty(penalty)
    scales = _batchnorm_scales(model)
    if not scales:
        return torch.zeros(())
    return penalty * torch.stack([scale.abs().sum() for scale in scales]).sum()


@torch.no_grad()
def add_slim_subgradient(model: nn.Module, penalty: float = 1e-4) -> None:
    """Add the L1 subgradient ``penalty * sign(gamma)`` to every BatchNorm2d scale's gradient.

    Optimizer-agnostic: call it between ``loss.backward()`` and ``optimizer.step()``.
    """
    _check_penalty(penalty)
    for scale in _batchnorm_scales(model):
        if scale.grad is None:
            scale.grad = torch.zeros_like(scale)
        scale.grad.add_(torch.sign(scale), alpha=penalty)


def global_channel_masks(scales: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """0/1 channel masks pruning the ``int(sparsity * total)`` smallest ``|gamma|`` of all layers.

    Ties go to the earlier layer and lower channel. A layer never loses its last channel:
    when the global ranking would empty a layer, its largest channel is kept.
    """
    names = list(scales)
    flat = torch.cat([scales[name].detach().abs().flatten().float().cpu() for name in names])
    masks = {name: torch.ones_like(scales[name], dtype=torch.float32).cpu() for name in names}
    count = int(sparsity * flat.numel())
    if count > 0:
        pruned = torch.argsort(flat, stable=True)[:count]
        flat_mask = torch.ones_like(flat)
        flat_mask[pruned] = 0
        for name, part in zip(names, torch.split(flat_mask, [scales[n].numel() for n in names])):
            if part.sum() == 0:
                part[scales[name].detach().abs().flatten().argmax()] = 1
            masks[name] = part.view_as(masks[name])
    return masks


class SlimPruner(Pruner):
    """Prunes BatchNorm2d channels whose ``|gamma|`` is smallest over all selected layers.

    ``config_list`` keys: ``sparsity`` (fraction of all selected channels to prune; every entry
    must give the same value, as the ranking is global). ``op_types`` may name BatchNorm2d
    only. Masks cover the BatchNorm's weight and bias, so a pruned channel outputs zero.

    >>> pruner = SlimPruner(model, [{"sparsity": 0.8, "op_types": ["BatchNorm2d"]}])
    >>> model = pruner.compress()
    """

    name: ClassVar[str] = "slim"
    config_schema: ClassVar[dict[str, Any]] = {
        "properties": {"sparsity": {**FRACTION, "description": "Fraction of all selected BN channels to prune."}},
        "required": ["sparsity"],
    }
    default_op_types: ClassVar[tuple[str, ...]] = ("BatchNorm2d",)
    supported_op_types: ClassVar[tuple[str, ...] | None] = ("BatchNorm2d",)

    @hookimpl
    def validate_config(self, config_list: list[dict[str, Any]]) -> list[str]:
        return same_value_errors(config_list, "sparsity", "SlimPruner ranks all BatchNorm2d layers together, so give one sparsity")

    @hookimpl
    def calc_mask(self, wrapper: ModuleWrapper, sparsity: float) -> dict[str, torch.Tensor | None]:
        scales = {name: w.module.weight for name, w in self.wrappers.items()}
        channel_mask = global_channel_masks(scales, sparsity)[wrapper.name].to(wrapper.weight_mask)
        return {"weight_mask": channel_mask, "bias_mask": None if wrapper.bias_mask is None else channel_mask.clone()}


@hookimpl
def register_compressors() -> list[type]:
    return [SlimPruner]
