"""The model side of AMC: which output channels can go, what they cost, and the pruning itself.

:class:`ChannelModel` analyses a copy of the model once, with the speedup's channel analysis
(:class:`nncore.speedup.analysis.Analysis`), on one input:

* a *channel group* is a set of selected Conv2d/Linear layers whose output channels are coupled
  index by index (residual adds): they lose the same channels. A group is kept only when the
  speedup engine, shown masks that prune half of its channels, really removes them; its
  BatchNorms and depthwise convolutions follow (their channels are masked too);
* the channels of a group are ranked once, as NNI's AMC does, by the L1 norm of the weight
  columns that read them in the next layers (the filters' own L1 norm when no layer reads them);
  pruning ``k`` channels removes the ``k`` last;
* FLOPs are ``nncore.utils.count_flops_params``'s, per layer, scaled by the fraction of its input
  and output channels that stay (a depthwise convolution by its channels only): exactly what
  the counter reports on the model that ``ModelSpeedup`` shrinks from the masks;
* the layers that read pruned channels (Conv2d without groups, Linear) get their weights rebuilt
  by least squares, as in AMC's channel pruning: the kept input columns ``W'`` minimise
  ``||X_kept W'^T - X W^T||`` over calibration inputs ``X``. Only the Gram matrix ``X^T X`` of each
  such layer is stored (``n_points_per_layer`` positions per image, as in NNI).
"""
from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping, Sequence

import attrs
import numpy as np
import torch
import torch.nn as nn

from nncore.artifacts import MaskDict
from nncore.builtin_pruners.filter_base import filter_masks
from nncore.speedup.analysis import Analysis
from nncore.utils.counter import count_flops_params

MAX_RECONSTRUCTED_FEATURES = 4096
"""Layers with more input features (``in_channels * kernel area``) keep their weights (the
Gram matrix would be too large); their pruned inputs are zeros all the same."""
MASKABLE_CHANNEL_TYPES = (nn.modules.batchnorm._BatchNorm,)
"""Modules whose per-channel weight and bias are masked along with a group's filters (a norm over
several channels, such as GroupNorm, would change the kept channels' statistics: not masked, so the
probe finds such channels not removable)."""


@attrs.frozen(eq=False)
class ChannelGroup:
    """Layers whose output channels go together, and the order in which they go.

    :ivar members: the selected layers (model order).
    :ivar roots: the channel class of each output channel.
    :ivar order: channel indices from the most to the least important.
    """

    members: tuple[str, ...]
    roots: np.ndarray
    order: np.ndarray

    @property
    def channels(self) -> int:
        """How many output channels the group has."""
        return len(self.roots)

    def removed_roots(self, kept: int) -> np.ndarray:
        """The channel classes removed when ``kept`` channels stay."""
        return self.roots[self.order[kept:]]


@attrs.frozen(eq=False)
class LayerCost:
    """One layer the FLOPs counter counts, and the channel classes its cost scales with."""

    name: str
    flops: int
    in_roots: np.ndarray | None
    out_roots: np.ndarray | None

    def pruned_flops(self, removed: np.ndarray) -> int:
        """The layer's FLOPs once the classes flagged in ``removed`` are gone."""
        numerator, denominator = self.flops, 1
        for roots in (self.in_roots, self.out_roots):
            if roots is not None and len(roots):
                numerator *= int((~removed[roots]).sum())
                denominator *= len(roots)
        return numerator // denominator


@attrs.frozen(eq=False)
class LayerGram:
    """What least-squares reconstruction needs for one layer reading pruned channels."""

    name: str
    gram: torch.Tensor  # float64, features x features, on the CPU
    feature_roots: np.ndarray  # channel class of each input feature (im2col column)


def batch_inputs(batch: Any) -> Any:
    """The model input of a loader batch: ``inputs`` of ``(inputs, target)``, else the batch."""
    return batch[0] if isinstance(batch, (tuple, list)) and batch else batch


def first_of(value: Any, count: int) -> Any:
    """The first ``count`` samples of a tensor (or of every tensor in a tuple/list)."""
    if isinstance(value, torch.Tensor):
        return value[:count]
    if isinstance(value, (tuple, list)):
        return type(value)(first_of(item, count) for item in value)
    return value


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` (a tensor, or tensors in a tuple/list) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(item, device) for item in value)
    return value


def as_args(value: Any) -> tuple:
    """A model input as positional arguments."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def is_depthwise(module: nn.Module) -> bool:
    """A convolution with one input channel per output channel and per group."""
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.in_channels == module.out_channels


def channel_weight_rows(module: nn.Module, slots: int) -> bool:
    """Whether ``module``'s weight (and bias) have one row per channel of an axis of ``slots``."""
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    return (isinstance(weight, torch.Tensor) and weight.shape[0] == slots
            and (bias is None or (isinstance(bias, torch.Tensor) and bias.shape[0] == slots)))


class ChannelModel:
    """A working copy of the model, the channel groups AMC may prune, their FLOPs and pruning.

    :param model: the model (copied; never changed).
    :param selected: the selected layer names (Conv2d / Linear).
    :param dummy_input: one input of the model, for the analysis and the FLOPs count.
    :raises Exception: whatever the model raises on ``dummy_input``; the caller reports it.
    """

    def __init__(self, model: nn.Module, selected: Sequence[str], dummy_input: Any):
        self.model = copy.deepcopy(model)
        self.model.eval()
        self.dummy_input = dummy_input
        self.original_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.modules = dict(self.model.named_modules())
        _, _, results = count_flops_params(self.model, as_args(dummy_input), verbose=False)
        analysis = Analysis(self.model, dummy_input)
        roots, records = analysis.decision.roots, analysis.ctx.records
        self.root_count = int(roots.max()) + 1
        self.in_roots = {o: roots[s] for (o, axis), s in records.items() if axis == "in" and o in self.modules}
        self.out_roots = {o: roots[s] for (o, axis), s in records.items()
                          if axis in ("out", "channels") and o in self.modules}
        self.costs = [self._cost(r["name"], int(r["flops"])) for r in results]
        self.original_flops = sum(cost.flops for cost in self.costs)
        self.mask_targets = [name for name in self.modules if name in self.out_roots and self._maskable(name)]
        candidates = self._candidate_groups(selected)
        self.groups = self._probe(candidates)
        self.readers = self._readers()
        self.grams: dict[str, LayerGram] = {}

    # -- analysis -----------------------------------------------------------------------------
    def _cost(self, name: str, flops: int) -> LayerCost:
        module = self.modules.get(name)
        if module is not None and is_depthwise(module):
            return LayerCost(name, flops, None, self.out_roots.get(name))
        return LayerCost(name, flops, self.in_roots.get(name), self.out_roots.get(name))

    def _maskable(self, name: str) -> bool:
        module = self.modules[name]
        layer = isinstance(module, (nn.Conv2d, nn.Conv1d, nn.Conv3d, nn.Linear))
        maskable = layer or isinstance(module, MASKABLE_CHANNEL_TYPES)
        return maskable and channel_weight_rows(module, len(self.out_roots[name]))

    def _candidate_groups(self, selected: Sequence[str]) -> list[tuple[str, ...]]:
        """Selected layers bucketed by identical output classes; a bucket that also holds a layer
        that is not selected, a pinned class or fewer than two channels is dropped."""
        chosen = set(selected)
        buckets: dict[bytes, list[str]] = {}
        for name in self.modules:
            module = self.modules[name]
            if name in self.in_roots and name in self.out_roots and not is_depthwise(module):
                buckets.setdefault(self.out_roots[name].tobytes(), []).append(name)
        groups = []
        for members in buckets.values():
            roots = self.out_roots[members[0]]
            if set(members) <= chosen and len(roots) >= 2 and bool((roots != 0).all()):
                groups.append(tuple(members))
        return groups

    def _probe(self, candidates: list[tuple[str, ...]]) -> list[ChannelGroup]:
        """The candidates whose channels the speedup engine removes when half of them are masked."""
        if not candidates:
            return []
        removed = np.zeros(self.root_count, dtype=bool)
        for members in candidates:
            roots = self.out_roots[members[0]]
            removed[roots[: len(roots) // 2]] = True
        probe = copy.deepcopy(self.model)
        masks = self.masks(removed)
        with torch.no_grad():
            for name, entry in masks.items():
                module = probe.get_submodule(name)
                module.weight.mul_(entry["weight"].to(module.weight))
                if entry["bias"] is not None:
                    module.bias.mul_(entry["bias"].to(module.bias))
        gone = Analysis(probe, self.dummy_input, masks).decision.removed
        importance = self._importance()
        groups = []
        for members in candidates:
            roots = self.out_roots[members[0]]
            if set(roots[: len(roots) // 2].tolist()) <= gone:
                scores = importance[roots]
                if not scores.any():
                    scores = sum(self.modules[m].weight.detach().flatten(1).abs().sum(1).double().cpu().numpy()
                                 for m in members)
                order = np.argsort(-scores, kind="stable")
                groups.append(ChannelGroup(members=members, roots=roots.copy(), order=order))
        return groups

    def _importance(self) -> np.ndarray:
        """Per channel class: the L1 norm of the weight columns that read it (Conv without groups,
        Linear), summed over the reading layers."""
        importance = np.zeros(self.root_count)
        for name, roots in self.in_roots.items():
            module = self.modules[name]
            if isinstance(module, nn.modules.conv._ConvNd) and module.groups != 1:
                continue
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.dim() < 2 or weight.shape[1] != len(roots):
                continue
            columns = weight.detach().transpose(0, 1).flatten(1).abs().sum(1).double().cpu().numpy()
            np.add.at(importance, roots, columns)
        return importance

    def _readers(self) -> list[str]:
        """Layers whose weights are rebuilt: Conv2d without groups and Linear reading a group's channels."""
        prunable = np.zeros(self.root_count, dtype=bool)
        for group in self.groups:
            prunable[group.roots] = True
        found = []
        for name, roots in self.in_roots.items():
            module = self.modules[name]
            plain = isinstance(module, nn.Linear) or (
                isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
                and not isinstance(module.padding, str))
            if plain and prunable[roots].any() and module.weight[0].numel() <= MAX_RECONSTRUCTED_FEATURES:
                found.append(name)
        return found

    # -- calibration ----------------------------------------------------------------------------
    def calibrate(self, batches: Iterable[Any], points_per_image: int, generator: torch.Generator) -> None:
        """Accumulate the Gram matrix of every rebuilt layer's input over ``batches`` (inputs)."""
        sums: dict[str, torch.Tensor] = {}

        def hook(name: str):
            module = self.modules[name]

            def record(_module: nn.Module, inputs: tuple) -> None:
                features = self._features(module, inputs[0].detach(), points_per_image, generator)
                gram = features.T @ features
                sums[name] = gram if name not in sums else sums[name] + gram
            return record

        handles = [self.modules[name].register_forward_pre_hook(hook(name)) for name in self.readers]
        try:
            with torch.no_grad():
                for inputs in batches:
                    self.model(*as_args(inputs))
        finally:
            for handle in handles:
                handle.remove()
        for name, gram in sums.items():
            module = self.modules[name]
            area = module.weight[0, 0].numel() if isinstance(module, nn.Conv2d) else 1
            feature_roots = np.repeat(self.in_roots[name], area)
            self.grams[name] = LayerGram(name, gram.cpu(), feature_roots)

    @staticmethod
    def _features(module: nn.Module, x: torch.Tensor, points: int, generator: torch.Generator) -> torch.Tensor:
        """Rows of input features (im2col for a convolution), float64: ``points`` random positions
        per image for a convolution, every row for a linear layer."""
        if isinstance(module, nn.Linear):
            return x.reshape(-1, x.shape[-1]).double()
        columns = nn.functional.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        positions = columns.shape[2]
        chosen = torch.randint(positions, (min(points, positions),), generator=generator).to(columns.device)
        return columns[:, :, chosen].transpose(1, 2).reshape(-1, columns.shape[1]).double()

    # -- pruning ----------------------------------------------------------------------------------
    def removed(self, kept: Mapping[int, int]) -> np.ndarray:
        """Flags of the channel classes removed when group ``i`` keeps ``kept[i]`` channels."""
        flags = np.zeros(self.root_count, dtype=bool)
        for index, count in kept.items():
            flags[self.groups[index].removed_roots(count)] = True
        return flags

    def flops(self, removed: np.ndarray) -> int:
        """FLOPs of the model with the flagged classes removed."""
        return sum(cost.pruned_flops(removed) for cost in self.costs)

    def channel_mask(self, name: str, removed: np.ndarray) -> torch.Tensor | None:
        """The 0/1 channel mask of a mask target (``None`` for any other module)."""
        if name not in self.mask_targets:
            return None
        return torch.from_numpy(~removed[self.out_roots[name]]).float()

    def masks(self, removed: np.ndarray) -> MaskDict:
        """``{name: {'weight', 'bias'}}`` of every layer, BatchNorm or depthwise convolution that
        loses channels (filter masks)."""
        found: MaskDict = {}
        for name in self.mask_targets:
            keep = self.channel_mask(name, removed)
            if keep is not None and not bool(keep.all()):
                masks = filter_masks(self.modules[name], keep.to(self.modules[name].weight.device))
                found[name] = {"weight": masks["weight_mask"], "bias": masks["bias_mask"]}
        return found

    def leader_of(self, name: str) -> str:
        """The first member of the first group whose channels the mask target ``name`` carries."""
        roots = set(self.out_roots[name].tolist())
        for group in self.groups:
            if roots & set(group.roots.tolist()):
                return group.members[0]
        return name

    @torch.no_grad()
    def apply(self, removed: np.ndarray) -> MaskDict:
        """Reset the copy's weights, zero the removed channels and rebuild the layers reading them."""
        self.model.load_state_dict(self.original_state)
        masks = self.masks(removed)
        for name, entry in masks.items():
            module = self.modules[name]
            module.weight.mul_(entry["weight"])
            if entry["bias"] is not None:
                module.bias.mul_(entry["bias"])
        for name, gram in self.grams.items():
            keep = ~removed[gram.feature_roots]
            if not keep.all():
                self._rebuild(self.modules[name], gram.gram, keep)
        return masks

    @staticmethod
    def _rebuild(module: nn.Module, gram: torch.Tensor, keep: np.ndarray) -> None:
        """Least squares: kept columns that best reproduce the layer's original output."""
        weight = module.weight
        original = weight.detach().reshape(weight.shape[0], -1).double().cpu()
        kept = torch.from_numpy(np.nonzero(keep)[0])
        system = gram[kept][:, kept]
        system = system + torch.eye(len(kept), dtype=system.dtype) * (1e-8 * float(system.diagonal().mean()) + 1e-12)
        right = gram[kept] @ original.T
        solution = torch.linalg.solve(system, right).T
        rebuilt = torch.zeros_like(original)
        rebuilt[:, kept] = solution
        weight.copy_(rebuilt.reshape(weight.shape).to(weight))
