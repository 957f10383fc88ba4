"""Filter pruners ranked by the activations of the user's own forward batches: APoZ and mean.

After ``compress()`` the masks stay all-ones while the first ``statistics_batch_num`` forward
passes of the model are observed (the activation function is applied to each conv's output,
as NNI does). The masks are computed once those batches are done: at once if the last one ran
without gradients, else after the next optimizer step (or at the next forward pass, whichever
comes first) so that the in-place masking never breaks that batch's backward pass.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from nncore.builtin_pruners.filter_base import FilterPruner, check_batch_num, output_channel_dim
from nncore.errors import ConfigError
from nncore.hookspecs import hookimpl
from nncore.wrapper import ModuleWrapper

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "relu6": F.relu6}


class ActivationRankFilterPruner(FilterPruner):
    """Base of the activation-ranked filter pruners: gathers per-channel activation statistics.

    :param model: the model to prune.
    :param config_list: e.g. ``[{"sparsity": 0.5, "op_types": ["Conv2d"]}]``.
    :param optimizer: the training optimizer (NNI's third positional argument; see
        :class:`~nncore.compressor.Pruner`).
    :param activation: ``'relu'`` or ``'relu6'``, applied to each conv's output when collecting.
    :param statistics_batch_num: how many forward batches to observe (>= 1).
    :param dependency_aware: see :class:`~nncore.builtin_pruners.filter_base.FilterPruner`.
    :param dummy_input: see :class:`~nncore.builtin_pruners.filter_base.FilterPruner`.
    :param plugins: extra hook implementations (see :mod:`nncore.hookspecs`).
    """

    def __init__(
        self,
        model: nn.Module,
        config_list: Sequence[dict[str, Any]],
        optimizer: torch.optim.Optimizer | None = None,
        activation: str = "relu",
        statistics_batch_num: int = 1,
        dependency_aware: bool = False,
        dummy_input: Any = None,
        *,
        plugins: Iterable[Any] = (),
    ):
        check_batch_num(statistics_batch_num)
        if activation not in ACTIVATIONS:
            raise ConfigError(
                f"activation must be one of {', '.join(map(repr, ACTIVATIONS))}, got {activation!r}",
                header="invalid argument",
            )
        self.statistics_batch_num = statistics_batch_num
        self.activation = activation
        self.batches_seen = 0
        self.channel_sums: dict[str, torch.Tensor] = {}
        self.element_counts: dict[str, int] = {}
        self.statistics_ready = False
        super().__init__(model, config_list, optimizer, dependency_aware, dummy_input, plugins=plugins)
        self._collection_handles: list[Any] = []
        self._finish_handles: list[Any] = []

    def channel_statistic(self, activation: torch.Tensor) -> torch.Tensor:
        """The per-channel sum (over batch and positions) that this criterion averages."""
        raise NotImplementedError

    def importance_from_average(self, average: torch.Tensor) -> torch.Tensor:
        """Turn the averaged statistic into an importance (higher keeps)."""
        raise NotImplementedError

    def filter_importance(self, wrapper: ModuleWrapper) -> torch.Tensor | None:
        if not self.statistics_ready or wrapper.name not in self.channel_sums:
            return None
        return self.importance_from_average(self.channel_sums[wrapper.name] / self.element_counts[wrapper.name])

    # -- collection -----------------------------------------------------------------------------

    def after_wrap(self) -> None:
        super().after_wrap()
        for name, wrapper in self.wrappers.items():
            self._collection_handles.append(wrapper.register_forward_hook(self._collector(name)))
        self._collection_handles.append(self.bound_model.register_forward_hook(self._count_batch))
        self._hook_handles.extend(self._collection_handles)

    def _collector(self, name: str) -> Callable[..., None]:
        activate = ACTIVATIONS[self.activation]
        channel_dim = output_channel_dim(self.wrappers[name].module)

        def collect(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            if self.tracing:
                return
            with torch.no_grad():
                activated = activate(output.detach()).float()
                channels = activated.movedim(channel_dim, 0).flatten(1)
                total = self.channel_statistic(channels)
                self.channel_sums[name] = self.channel_sums.get(name, 0) + total.cpu()
                self.element_counts[name] = self.element_counts.get(name, 0) + channels.shape[1]

        return collect

    def _count_batch(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if self.tracing:
            return
        self.batches_seen += 1
        if self.batches_seen < self.statistics_batch_num:
            return
        for handle in self._collection_handles:
            handle.remove()
        self._collection_handles = []
        if not torch.is_grad_enabled():
            self._finish()
            return
        self._finish_handles = [
            register_optimizer_step_post_hook(lambda *args: self._finish()),
            self.bound_model.register_forward_pre_hook(lambda *args: self._finish()),
        ]
        self._hook_handles.extend(self._finish_handles)

    def _finish(self) -> None:
        for handle in self._finish_handles:
            handle.remove()
        self._finish_handles = []
        self.statistics_ready = True
        self.statistics_complete()


class ActivationAPoZRankFilterPruner(ActivationRankFilterPruner):
    """Prunes the filters whose activations are most often zero (APoZ, Hu et al., 2016).

    >>> pruner = ActivationAPoZRankFilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}],
    ...                                         statistics_batch_num=1)
    >>> model = pruner.compress()   # then train: masks follow the first batch
    """

    name: ClassVar[str] = "apoz"

    def channel_statistic(self, activation: torch.Tensor) -> torch.Tensor:
        return (activation == 0).sum(dim=1).float()

    def importance_from_average(self, average: torch.Tensor) -> torch.Tensor:
        return 1.0 - average


class ActivationMeanRankFilterPruner(ActivationRankFilterPruner):
    """Prunes the filters with the lowest mean activation (Molchanov et al., 2017, sec. 2.2).

    >>> pruner = ActivationMeanRankFilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    >>> model = pruner.compress()   # then train: masks follow the first batch
    """

    name: ClassVar[str] = "mean_activation"

    def channel_statistic(self, activation: torch.Tensor) -> torch.Tensor:
        return activation.sum(dim=1)

    def importance_from_average(self, average: torch.Tensor) -> torch.Tensor:
        return average


@hookimpl
def register_compressors() -> list[type]:
    return [ActivationAPoZRankFilterPruner, ActivationMeanRankFilterPruner]
