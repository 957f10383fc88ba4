"""Utilities around compression: the flops/params counter (and channel dependency analysis)."""
from __future__ import annotations

from nncore.utils.counter import count_flops_params
from nncore.utils.dependency import ChannelDependency, GroupDependency
from nncore.utils.sensitivity import SensitivityAnalysis
