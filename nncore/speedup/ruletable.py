"""Which rule serves which module type: the built-in table and the registry users and plugins extend.

Register a rule for your own module type with :func:`register_shrink_rule`; a plugin ships rules
through the ``register_shrink_rules`` hook. Modules with a rule are captured as single units
(their ``forward`` is not looked into).
"""
from __future__ import annotations

from typing import Any

import torch.fx as fx
from torch import nn

from nncore.errors import ConfigError
from nncore.speedup.context import Context
from nncore.speedup.mha import MultiheadAttentionRule
from nncore.speedup.rules import (BatchNormRule, ChannelwiseRule, Conv1DRule, ConvRule, EmbeddingRule,
                                  FunctionRule, LinearRule, NormRule, ShrinkRule)

_KEEP = ["ReLU", "ReLU6", "LeakyReLU", "GELU", "SiLU", "Hardswish", "Mish", "ELU", "SELU", "CELU",
         "Tanh", "Hardtanh", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "Identity",
         "Softshrink", "Hardshrink", "Tanhshrink"]
_NO_ZERO = ["Sigmoid", "Hardsigmoid", "Softplus", "LogSigmoid"]
_POOL = ["MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d",
         "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d",
         "AdaptiveMaxPool3d", "Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d", "LPPool2d"]

_BUILTIN: dict[type, ShrinkRule] = {
    nn.Conv1d: ConvRule(), nn.Conv2d: ConvRule(), nn.Conv3d: ConvRule(), nn.Linear: LinearRule(),
    nn.BatchNorm1d: BatchNormRule(), nn.BatchNorm2d: BatchNormRule(), nn.BatchNorm3d: BatchNormRule(),
    nn.SyncBatchNorm: BatchNormRule(), nn.Flatten: FunctionRule("reshape"), nn.Unflatten: FunctionRule("reshape"),
    nn.LayerNorm: NormRule(), nn.Embedding: EmbeddingRule(), nn.GroupNorm: FunctionRule("pin"),
    nn.Softmax: FunctionRule("pin", "dim"), nn.LogSoftmax: FunctionRule("pin", "dim"),
    nn.PReLU: ChannelwiseRule(dim=1, params=("weight",), keeps_zero=True),
    nn.MultiheadAttention: MultiheadAttentionRule(),
}
for _name in _KEEP:
    _BUILTIN[getattr(nn, _name)] = FunctionRule("relu")
for _name in _NO_ZERO:
    _BUILTIN[getattr(nn, _name)] = FunctionRule("sigmoid")
for _name in _POOL:
    _BUILTIN[getattr(nn, _name)] = FunctionRule("max_pool2d")

if hasattr(nn, "RMSNorm"):
    _BUILTIN[nn.RMSNorm] = NormRule()

_BY_NAME: dict[str, ShrinkRule] = {"Conv1D": Conv1DRule(), "RMSNorm": NormRule()}
"""Rules for model-library classes nncore does not import (Hugging Face ``Conv1D``, ``LlamaRMSNorm``),
found by the end of the class name and checked by the rule's ``applies_to``."""

_USER: dict[type, ShrinkRule] = {}


def register_shrink_rule(module_type: type, rule: ShrinkRule) -> None:
    """Use ``rule`` to analyse and slice every module of ``module_type`` (and its subclasses).

    Registered rules take precedence over plugin rules and the built-in ones. Modules of this
    type are traced as single units (their ``forward`` is not looked into).

    :raises ConfigError: ``module_type`` is not an ``nn.Module`` subclass or ``rule`` not a ShrinkRule.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise ConfigError(f"register_shrink_rule: module_type must be an nn.Module subclass, got {module_type!r}",
                          header="invalid shrink rule")
    if not isinstance(rule, ShrinkRule):
        raise ConfigError(f"register_shrink_rule: rule for {module_type.__name__} must be a ShrinkRule "
                          f"instance, got {type(rule).__name__}", header="invalid shrink rule")
    _USER[module_type] = rule


def unregister_shrink_rule(module_type: type) -> None:
    """Forget the rule registered for ``module_type`` (no error if there is none)."""
    _USER.pop(module_type, None)


def plugin_rules() -> dict[type, ShrinkRule]:
    """Rules shipped by plugins through the ``register_shrink_rules`` hook."""
    try:
        from nncore.registry import plugin_manager
    except ImportError:  # registry not available: no plugin rules
        return {}
    hook = getattr(plugin_manager().hook, "register_shrink_rules", None)
    if hook is None:
        return {}
    rules: dict[type, ShrinkRule] = {}
    for answer in hook():
        for module_type, rule in answer or []:
            if isinstance(module_type, type) and isinstance(rule, ShrinkRule):
                rules[module_type] = rule
    return rules


def builtin_leaf_types() -> tuple[type, ...]:
    """Module types with a built-in rule: subclasses (``Conv2dSame``-style) are traced as units."""
    return tuple(_BUILTIN)


def extra_rules() -> dict[type, ShrinkRule]:
    """User rules over plugin rules: the types traced as units."""
    return {**plugin_rules(), **_USER}


def find_rule(module: nn.Module, extra: dict[type, ShrinkRule]) -> ShrinkRule | None:
    """The rule that analyses and slices ``module``: user rules, plugin rules, then built-in ones."""
    for table in (extra, _BUILTIN):
        for klass in type(module).__mro__:
            rule = table.get(klass)
            if rule is not None:
                return rule if rule.applies_to(module) else None
    for suffix, rule in _BY_NAME.items():
        if type(module).__name__.endswith(suffix) and rule.applies_to(module):
            return rule
    return None


def call_module(ctx: Context, node: fx.Node, value: Any) -> Any:
    """The info of a call_module node, through the module's rule (a barrier when it has none)."""
    module = ctx.capture.get_submodule(str(node.target))
    rule = find_rule(module, ctx.extra_rules)
    if rule is None:
        return ctx.barrier(node, value)
    inputs = [ctx.info(a) for a in node.args]
    return rule.propagate(ctx, node, module, inputs, value)
