"""TaylorFOWeightFilterPruner: first-order Taylor importance of filters (Molchanov et al., 2019).

A filter's importance is ``sum over the filter of (w * dL/dw) ** 2`` (the seed's formula and
NNI's code), summed over the first
``statistics_batch_num`` optimizer steps after ``compress()``: the gradients are read just
before each ``optimizer.step()``. The masks stay all-ones until then and are computed right
after the last of those steps.
"""
from __future__ import annotations

from typing import Any, ClassVar, Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from nncore.builtin_pruners.filter_base import FilterPruner, check_batch_num
from nncore.utils.layers import filter_view
from nncore.errors import ConfigError
from nncore.hookspecs import hookimpl
from nncore.wrapper import ModuleWrapper


def taylor_contribution(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Per-filter ``sum of (w * dL/dw) ** 2`` of one weight and its gradient (filters on dim 0)."""
    return (weight.detach() * grad.detach()).pow(2).flatten(1).sum(dim=1)


class TaylorFOWeightFilterPruner(FilterPruner):
    """Prunes the filters with the smallest first-order Taylor importance.

    :param model: the model to prune.
    :param config_list: e.g. ``[{"sparsity": 0.5, "op_types": ["Conv2d"]}]``.
    :param optimizer: the optimizer of the user's training; its steps are observed.
    :param statistics_batch_num: how many optimizer steps to accumulate importance over (>= 1).
    :param dependency_aware: see :class:`~nncore.builtin_pruners.filter_base.FilterPruner`.
    :param dummy_input: see :class:`~nncore.builtin_pruners.filter_base.FilterPruner`.
    :param plugins: extra hook implementations (see :mod:`nncore.hookspecs`).

    >>> pruner = TaylorFOWeightFilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], optimizer)
    >>> model = pruner.compress()   # then train: masks follow the first step
    """

    name: ClassVar[str] = "taylorfo"
    job_arguments: ClassVar[Mapping[str, str]] = {"optimizer": "optimizer", **FilterPruner.job_arguments}

    def __init__(
        self,
        model: nn.Module,
        config_list: Sequence[dict[str, Any]],
        optimizer: torch.optim.Optimizer | None = None,
        statistics_batch_num: int = 1,
        dependency_aware: bool = False,
        dummy_input: Any = None,
        *,
        plugins: Iterable[Any] = (),
    ):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(
                f"TaylorFOWeightFilterPruner needs the training optimizer (a torch.optim.Optimizer) "
                f"to read gradients at each step, got {type(optimizer).__name__}",
                header="invalid argument",
            )
        check_batch_num(statistics_batch_num)
        self.statistics_batch_num = statistics_batch_num
        self.steps_seen = 0
        self.contributions: dict[str, torch.Tensor] = {}
        self.statistics_ready = False
        super().__init__(model, config_list, optimizer, dependency_aware, dummy_input, plugins=plugins)
        self._step_handles: list[Any] = []

    def filter_importance(self, wrapper: ModuleWrapper) -> torch.Tensor | None:
        if not self.statistics_ready:
            return None
        return self.contributions.get(wrapper.name, torch.zeros(filter_view(wrapper.module, wrapper.module.weight).shape[0]))

    def after_wrap(self) -> None:
        super().after_wrap()
        self._step_handles = [
            self.optimizer.register_step_pre_hook(self._accumulate),
            self.optimizer.register_step_post_hook(self._maybe_finish),
        ]
        self._hook_handles.extend(self._step_handles)

    def _accumulate(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        for name, wrapper in self.wrappers.items():
            weight = wrapper.module.weight
            if weight.grad is not None:
                module = wrapper.module
                contribution = taylor_contribution(filter_view(module, weight), filter_view(module, weight.grad)).cpu()
                self.contributions[name] = self.contributions.get(name, 0) + contribution
        self.steps_seen += 1

    def _maybe_finish(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.steps_seen < self.statistics_batch_num:
            return
        for handle in self._step_handles:
            handle.remove()
        self._step_handles = []
        self.statistics_ready = True
        self.statistics_complete()


@hookimpl
def register_compressors() -> list[type]:
    return [TaylorFOWeightFilterPruner]
