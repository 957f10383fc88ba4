"""The base of every filter (output-channel) pruner: channel masks from an importance vector.

Filters are the output channels of ``Conv1d`` / ``Conv2d`` and the output neurons of ``Linear``
(rows of its weight) and of Hugging Face's ``Conv1D`` (columns of its weight, stored as
``(in_features, out_features)``; recognised by class name, transformers is not needed), each
with its bias entry, as NNI 2.x's norm pruners prune them.

A subclass says how important each filter of a layer is (:meth:`FilterPruner.filter_importance`,
higher keeps); the base turns that into channel masks and makes them *complete*: a pruned
filter's weight and bias are masked and so is the matching channel of the BatchNorm that
directly consumes the convolution's output, so the channel outputs exactly zero after BN.
With ``dependency_aware=True`` convolutions whose channels are coupled (residual adds, grouped
and depthwise convolutions) share one channel mask chosen by their summed importance.
"""
from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from nncore.compressor import Pruner
from nncore.config import FRACTION
from nncore.errors import ConfigError, NncoreError
from nncore.hookspecs import hookimpl
from nncore.utils.batchnorm import find_following_batchnorms
from nncore.utils.layers import filter_view
from nncore.wrapper import ModuleWrapper

CONV_OP_TYPES: tuple[str, ...] = ("Conv1d", "Conv2d")
FILTER_OP_TYPES: tuple[str, ...] = CONV_OP_TYPES + ("Linear", "Conv1D")
"""What the filter pruners accept; ``'default'`` selects the convolutions only, as in NNI."""


def output_channel_dim(module: nn.Module) -> int:
    """The dimension of ``module``'s output that holds its filters: 1 for convolutions, -1 for
    linear layers (``Linear``, HF ``Conv1D``), whose features are the last dimension."""
    return 1 if isinstance(module, nn.modules.conv._ConvNd) else -1


def check_batch_num(statistics_batch_num: Any) -> None:
    """Raise :class:`ConfigError` unless ``statistics_batch_num`` is an int >= 1."""
    if isinstance(statistics_batch_num, bool) or not isinstance(statistics_batch_num, int) or statistics_batch_num < 1:
        raise ConfigError(
            f"statistics_batch_num must be an int >= 1, got {statistics_batch_num!r}", header="invalid argument"
        )


def channel_mask_from_importance(importance: torch.Tensor, sparsity: float, groups: int = 1) -> torch.Tensor:
    """A 0/1 vector that prunes the least important channels.

    The channels are split into ``groups`` equal, consecutive groups and each group loses
    ``int(sparsity * group_size)`` channels, rounded down as NNI does (at least one channel per
    group is kept), so every group keeps the same number of channels. Ties go to the lower index (stable sort).
    """
    count = importance.numel()
    if groups < 1 or count % groups:
        groups = 1
    group_size = count // groups
    pruned_per_group = min(int(sparsity * group_size), group_size - 1)
    mask = torch.ones(count, dtype=importance.dtype, device=importance.device)
    if pruned_per_group <= 0:
        return mask
    for start in range(0, count, group_size):
        order = torch.argsort(importance[start:start + group_size], stable=True)
        mask[start + order[:pruned_per_group]] = 0
    return mask


def filter_masks(module: nn.Module, channel_mask: torch.Tensor) -> dict[str, torch.Tensor | None]:
    """Weight and bias masks of ``module`` that keep exactly the output channels in ``channel_mask``."""
    weight = filter_view(module, module.weight)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    weight_mask = filter_view(module, channel_mask.to(weight.dtype).view(shape).expand_as(weight)).clone(
        memory_format=torch.contiguous_format)
    bias = getattr(module, "bias", None)
    bias_mask = channel_mask.to(bias.dtype).clone() if isinstance(bias, torch.Tensor) else None
    return {"weight_mask": weight_mask, "bias_mask": bias_mask}


def kept_channels(wrapper: ModuleWrapper) -> torch.Tensor:
    """The output channels of a wrapped layer that its weight mask keeps (any weight kept)."""
    flat = filter_view(wrapper.module, wrapper.weight_mask).flatten(1)
    return ((flat.amax(dim=1) != 0) | (flat.amin(dim=1) != 0)).to(flat.dtype)  # no mask-sized temporary


class FilterPruner(Pruner):
    """Base of the filter pruners: prunes whole output channels of ``Conv1d`` / ``Conv2d`` and
    whole output neurons of ``Linear`` / HF ``Conv1D`` layers (``'default'``: the convolutions).

    ``config_list`` keys: ``sparsity`` (fraction of each layer's filters to prune; each layer
    loses ``int(sparsity * filters)`` filters, rounded down as NNI does, and keeps at least one).

    :param model: the model to prune.
    :param config_list: e.g. ``[{"sparsity": 0.5, "op_types": ["Conv2d"]}]``.
    :param optimizer: the training optimizer (NNI's third positional argument; see
        :class:`~nncore.compressor.Pruner`).
    :param dependency_aware: give layers whose channels are coupled (their outputs meet in an
        add, or a depthwise convolution or element-wise product ties them; the sets of
        ``ChannelDependency(..., depthwise=True)``) one shared channel mask, chosen by their
        summed importance at the smallest sparsity configured in the set, so speedup can really
        remove those channels; a conv feeding a grouped conv loses the same number of channels
        in every group. (NNI couples only adds and makes depthwise convolutions a group
        constraint, which forbids pruning the conv before them.)
    :param dummy_input: an input of the model (tensor, tuple of positional inputs or dict of
        keyword inputs); required with ``dependency_aware=True``, and used to find the
        BatchNorm after each convolution (without it the model is traced with ``torch.fx``, or,
        if that fails, on its first forward batch after ``compress()``).
    :param plugins: extra hook implementations (see :mod:`nncore.hookspecs`).
    :raises ConfigError: bad ``config_list`` or arguments; the model is untouched.
    """

    config_schema: ClassVar[dict[str, Any]] = {
        "properties": {"sparsity": {**FRACTION, "description": "Fraction of each layer's filters to prune."}},
        "required": ["sparsity"],
    }
    default_op_types: ClassVar[tuple[str, ...]] = CONV_OP_TYPES
    supported_op_types: ClassVar[tuple[str, ...] | None] = FILTER_OP_TYPES
    job_arguments: ClassVar[Mapping[str, str]] = {"dependency_aware": "dependency_aware", "dummy_input": "dummy_input"}

    def __init__(
        self,
        model: nn.Module,
        config_list: Sequence[dict[str, Any]],
        optimizer: torch.optim.Optimizer | None = None,
        dependency_aware: bool = False,
        dummy_input: Any = None,
        *,
        plugins: Iterable[Any] = (),
    ):
        if dependency_aware and dummy_input is None:
            raise ConfigError(
                f"{type(self).__name__}: dependency_aware=True needs dummy_input (an input of the model) "
                "to trace which convolutions share channels",
                header="invalid argument",
            )
        self.dependency_aware = bool(dependency_aware)
        self.dummy_input = dummy_input
        super().__init__(model, config_list, optimizer, plugins=plugins)
        self.channel_groups: dict[str, tuple[str, ...]] = {}
        self.group_counts: dict[str, int] = {}
        if self.dependency_aware:
            self._on_dummy_input(self._analyse_dependencies)
        self.batchnorm_after = self._on_dummy_input(self._find_batchnorms)
        self._hook_handles: list[Any] = []
        self._owns_wrappers = False
        self.tracing = False

    def compress(self) -> nn.Module:
        """Wrap the selected convs (and the BatchNorm after each) and compute their masks."""
        self._owns_wrappers = True
        return super().compress()

    def statistics_complete(self) -> None:
        """Called by statistics-based subclasses once their importance is known: recompute the
        masks now, unless another pruner (AGP) owns the wrappers and schedules the updates."""
        if self._owns_wrappers and self.wrappers:
            self.update_masks()

    # -- what subclasses provide --------------------------------------------------------------

    def filter_importance(self, wrapper: ModuleWrapper) -> torch.Tensor | None:
        """Importance of each output channel of ``wrapper.module`` (higher keeps).

        ``None`` means "not known yet" (statistics still being gathered): the masks stay all-ones.
        """
        raise NotImplementedError

    # -- masks ----------------------------------------------------------------------------------

    @hookimpl
    def calc_mask(self, wrapper: ModuleWrapper, sparsity: float) -> dict[str, torch.Tensor | None]:
        channel_mask = self.channel_mask(wrapper, sparsity)
        self._mask_followers(wrapper.name, channel_mask)
        return filter_masks(wrapper.module, channel_mask)

    def channel_mask(self, wrapper: ModuleWrapper, sparsity: float) -> torch.Tensor:
        """The 0/1 output-channel mask of one wrapped layer at ``sparsity``."""
        members = self.channel_groups.get(wrapper.name, (wrapper.name,)) if self.dependency_aware else (wrapper.name,)
        members = tuple(name for name in members if name in self.wrappers) or (wrapper.name,)
        importances = [self.filter_importance(self.wrappers[name]) for name in members]
        out_channels = filter_view(wrapper.module, wrapper.module.weight).shape[0]
        if any(importance is None for importance in importances):
            return torch.ones(out_channels, dtype=wrapper.module.weight.dtype, device=wrapper.module.weight.device)
        if len(members) > 1:
            configured = {config.name: config["sparsity"] for config in self.layer_configs}
            sparsity = min([sparsity] + [configured[name] for name in members if name != wrapper.name])
        groups = math.lcm(*(self.group_counts.get(name, 1) for name in members)) if self.dependency_aware else 1
        total = torch.stack([importance.detach().to(wrapper.module.weight.device).float() for importance in importances]).sum(0)
        return channel_mask_from_importance(total, sparsity, groups).to(wrapper.module.weight.dtype)

    def update_masks(self, sparsities: Mapping[str, float] | None = None) -> None:
        """Recompute the layers' masks, then give each following BatchNorm its conv's channel mask."""
        super().update_masks(sparsities)
        for name in (self.wrappers if sparsities is None else sparsities):
            self._mask_followers(name, kept_channels(self.wrappers[name]))

    def _mask_followers(self, leader: str, channel_mask: torch.Tensor) -> None:
        for follower in self.followers.values():
            if follower.config.get("leader") == leader:
                mask = channel_mask.to(follower.weight_mask.dtype)
                follower.set_masks(mask, None if follower.bias_mask is None else mask.clone())

    # -- BatchNorm followers --------------------------------------------------------------------

    def _on_dummy_input(self, analyse: Callable[[], Any]) -> Any:
        """Run an analysis that may call the model: in eval mode (BatchNorm statistics untouched,
        batches of one allowed), its failures reported as a bad ``dummy_input``."""
        was_training = self.bound_model.training
        self.bound_model.eval()
        try:
            return analyse()
        except NncoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the user's model on dummy_input
            raise ConfigError(
                f"{type(self).__name__}: dummy_input does not run through the model ({type(exc).__name__}: {exc})",
                header="invalid argument",
            ) from exc
        finally:
            self.bound_model.train(was_training)

    def _find_batchnorms(self) -> dict[str, str] | None:
        from nncore.speedup.analysis import split_inputs

        model_input = () if self.dummy_input is None else split_inputs(self.dummy_input)
        return find_following_batchnorms(self.bound_model, [c.name for c in self.layer_configs], *model_input)

    def after_wrap(self) -> None:
        """Wrap the BatchNorm after each conv (found when built, else on the first forward batch)."""
        if self.batchnorm_after is None:
            self._first_batch_trace = self.bound_model.register_forward_pre_hook(self._trace_first_batch, with_kwargs=True)
            self._hook_handles.append(self._first_batch_trace)
            return
        self._add_batchnorm_followers(self.batchnorm_after)

    def _trace_first_batch(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._first_batch_trace.remove()
        self.tracing = True
        try:
            followers = find_following_batchnorms(self.bound_model, list(self.wrappers), args, kwargs)
        finally:
            self.tracing = False
        self._add_batchnorm_followers(followers or {})
        for name in self.wrappers:
            self._mask_followers(name, kept_channels(self.wrappers[name]))

    def _add_batchnorm_followers(self, followers: Mapping[str, str]) -> None:
        for conv_name, bn_name in followers.items():
            if bn_name not in self.wrappers:
                self.add_follower(bn_name, conv_name)

    def unwrap_model(self) -> nn.Module:
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []
        return super().unwrap_model()

    # -- dependency-aware mode ------------------------------------------------------------------

    def _analyse_dependencies(self) -> None:
        from nncore.speedup.analysis import Analysis, coupled_sets
        from nncore.utils.dependency import grouped_counts

        configured = {config.name for config in self.layer_configs}
        analysis = Analysis(self.bound_model, self.dummy_input)
        for dependency_set in coupled_sets(analysis):
            members = tuple(sorted(name for name in dependency_set if name in configured))
            for name in members:
                self.channel_groups[name] = members
        self.group_counts = grouped_counts(analysis)
