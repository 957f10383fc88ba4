"""Filter pruners ranked by the weights alone: L1 norm, L2 norm and FPGM (geometric median)."""
from __future__ import annotations

from typing import ClassVar

import torch

from nncore.builtin_pruners.filter_base import FilterPruner
from nncore.utils.layers import filter_view
from nncore.hookspecs import hookimpl
from nncore.wrapper import ModuleWrapper


def filter_l1_norms(weight: torch.Tensor) -> torch.Tensor:
    """Sum of ``|w|`` over each output channel (filter) of a conv weight."""
    return weight.detach().flatten(1).abs().sum(dim=1)


def filter_l2_norms(weight: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each filter of a conv weight."""
    return weight.detach().flatten(1).norm(p=2, dim=1)


def geometric_median_distances(weight: torch.Tensor) -> torch.Tensor:
    """For each filter, the summed Euclidean distance to every other filter of the layer.

    The filters with the smallest sum are nearest the geometric median: the most replaceable.
    """
    filters = weight.detach().flatten(1).double()
    return torch.cdist(filters, filters).sum(dim=1).to(weight.dtype)


class L1FilterPruner(FilterPruner):
    """Prunes the filters with the smallest L1 norm (Li et al., 2017) of each selected conv.

    >>> pruner = L1FilterPruner(model, [{"sparsity": 0.8, "op_types": ["Conv2d"]}])
    >>> model = pruner.compress()
    """

    name: ClassVar[str] = "l1"

    def filter_importance(self, wrapper: ModuleWrapper) -> torch.Tensor:
        return filter_l1_norms(filter_view(wrapper.module, wrapper.module.weight))


class L2FilterPruner(FilterPruner):
    """Prunes the filters with the smallest L2 norm of each selected conv.

    >>> pruner = L2FilterPruner(model, [{"sparsity": 0.8, "op_types": ["Conv2d"]}])
    >>> model = pruner.compress()
    """

    name: ClassVar[str] = "l2"

    def filter_importance(self, wrapper: ModuleWrapper) -> torch.Tensor:
        return filter_l2_norms(filter_view(wrapper.module, wrapper.module.weight))


class FPGMPruner(FilterPruner):
    """Prunes the filters nearest the geometric median of each selected conv (He et al., 2019).

    A filter's score is its summed Euclidean distance to the other filters of the layer; the
    smallest scores go first.

    >>> pruner = FPGMPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    >>> model = pruner.compress()
    """

    name: ClassVar[str] = "fpgm"

    def filter_importance(self, wrapper: ModuleWrapper) -> torch.Tensor:
        return geometric_median_distances(filter_view(wrapper.module, wrapper.module.weight))


@hookimpl
def register_compressors() -> list[type]:
    return [L1FilterPruner, L2FilterPruner, FPGMPruner]
