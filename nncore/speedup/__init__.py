"""Model speedup: masks become a truly smaller model that computes the same function.

``ModelSpeedup(model, dummy_input, masks).speedup_model()`` captures the model (torch.fx when it
traces, else a recording of one forward on ``dummy_input``; see ``docs/speedup.md``), couples channels that must go together (residual adds, concatenation, grouped and depthwise
convolution, flatten/view into Linear, attention heads), keeps every channel it cannot prove
removable, and slices each module with a per-type rule. Extend it with
:func:`register_shrink_rule`, or ship rules from a plugin via the ``register_shrink_rules`` hook.
"""
from __future__ import annotations

from nncore.speedup.analysis import find_attention_groups
from nncore.speedup.attention import AttentionGroup
from nncore.speedup.engine import ModelSpeedup, apply_compression_results
from nncore.speedup.int8 import export_float_onnx, export_int8_onnx
from nncore.speedup.persist import load_pruned, save_pruned
from nncore.speedup.rules import BatchNormRule, ChannelwiseRule, ConvRule, LinearRule, ShrinkRule
from nncore.speedup.ruletable import register_shrink_rule, unregister_shrink_rule
from nncore.speedup.summary import SpeedupSummary

__all__ = [
    "AttentionGroup",
    "BatchNormRule",
    "ChannelwiseRule",
    "ConvRule",
    "LinearRule",
    "ModelSpeedup",
    "ShrinkRule",
    "SpeedupSummary",
    "apply_compression_results",
    "export_float_onnx",
    "export_int8_onnx",
    "find_attention_groups",
    "load_pruned",
    "register_shrink_rule",
    "save_pruned",
    "unregister_shrink_rule",
]
