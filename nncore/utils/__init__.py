"""Utilities around compression: the flops/params counter, sensitivity analysis, channel and
group dependencies and mask-conflict fixing (NNI's CompressionUtils)."""
from __future__ import annotations

from nncore.utils.counter import count_flops_params
from nncore.utils.dependency import ChannelDependency, GroupDependency
from nncore.utils.mask_conflict import fix_mask_conflict
from nncore.utils.sensitivity import SensitivityAnalysis

__all__ = ["ChannelDependency", "GroupDependency", "SensitivityAnalysis", "count_flops_params", "fix_mask_conflict"]
