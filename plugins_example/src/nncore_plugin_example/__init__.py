"""Example third-party nncore plugin."""
from nncore_plugin_example.random_pruner import RandomPruner
from nncore_plugin_example.ternary_quantizer import TernaryQuantizer

__all__ = ["RandomPruner", "TernaryQuantizer"]
