"""nncore's built-in pruning algorithms, each a plugin module named by an ``nncore`` entry point.

The core never imports this package; it finds the algorithms through the registry.
For seed-compatible imports: ``from nncore.builtin_pruners import LevelPruner, AGP_Pruner``.
"""
from nncore.builtin_pruners.agp import AGP_Pruner, AGPPruner
from nncore.builtin_pruners.level import LevelPruner

__all__ = ["AGPPruner", "AGP_Pruner", "LevelPruner"]
