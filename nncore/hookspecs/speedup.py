"""Hooks of model speedup: plugins ship shrinking rules for their own module types."""
from __future__ import annotations

from nncore.hookspecs import hookspec


@hookspec
def register_shrink_rules() -> list:
    """Return the shrinking rules this plugin provides for module types of its own.

    Each item is a ``(module_type, rule)`` pair, where ``rule`` is an instance of
    :class:`nncore.speedup.ShrinkRule` (for example ``ChannelwiseRule(dim=1)``). Rules
    registered with :func:`nncore.speedup.register_shrink_rule` take precedence.
    All answers are collected.
    """
