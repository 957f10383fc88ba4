"""Channel and group dependencies between layers, for dependency-aware pruning.

Built on the same analysis the speedup uses (:class:`nncore.speedup.analysis.Analysis`):
one torch.fx trace, one pass of channel-class propagation. Two layers are *channel
dependent* when their output channels are coupled index by index (a residual add, the
convolution before a depthwise one, a gate multiplied in), so pruning must remove the same
channel indices from all of them.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch import nn

from nncore.speedup.analysis import Analysis, coupled_sets


class ChannelDependency:
    """NNI's ``ChannelDependency``: which layers must prune the same output channels.

    :param model: the model to analyse (not modified)
    :param dummy_input: an input the model accepts (tensor, tuple or dict of keyword inputs)
    :ivar dependency_sets: list of sets of layer names (Conv/Linear, as in ``named_modules``)
        whose output channels must be pruned together; a layer with no coupling is alone in its set
    :ivar analysis: the shared :class:`~nncore.speedup.analysis.Analysis`
    """

    def __init__(self, model: nn.Module, dummy_input: Any, analysis: Analysis | None = None) -> None:
        self.model = model
        self.analysis = analysis or Analysis(model, dummy_input)
        self.dependency_sets: list[set[str]] = coupled_sets(self.analysis)
        self.dependency = {name: group for group in self.dependency_sets for name in group}


class GroupDependency:
    """NNI's ``GroupDependency``: per convolution, the group count its pruning must respect.

    ``dependency[name] = g`` means the output channels of ``name`` must be pruned evenly in ``g``
    groups (so the same number from every group), because they are the output of a grouped
    convolution with ``g`` groups or feed one. Depthwise convolutions (channels coupled one to
    one) appear in :class:`ChannelDependency` sets instead. Layers without constraint map to 1.

    :ivar dependency: dict layer name -> group count
    :ivar dependency_sets: the coupled sets of :class:`ChannelDependency` (same analysis)
    """

    def __init__(self, model: nn.Module, dummy_input: Any, analysis: Analysis | None = None) -> None:
        self.model = model
        self.analysis = analysis or Analysis(model, dummy_input)
        self.dependency_sets = coupled_sets(self.analysis)
        layers = self.analysis.layer_slots("out")
        self.dependency: dict[str, int] = {name: 1 for name in layers}
        roots = self.analysis.decision.roots
        for constraint in self.analysis.ctx.classes.constraints:
            groups = constraint.groups
            self.dependency[constraint.name] = math.lcm(self.dependency.get(constraint.name, 1), groups)
            feeding = set(np.unique(roots[constraint.in_slots]).tolist()) - {0}
            for name, layer_roots in layers.items():
                if feeding & set(np.unique(layer_roots).tolist()):
                    self.dependency[name] = math.lcm(self.dependency.get(name, 1), groups)
