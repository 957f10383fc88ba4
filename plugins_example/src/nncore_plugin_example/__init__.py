"""Example third-party nncore plugin."""
from nncore_plugin_example.random_pruner import RandomPruner

__all__ = ["RandomPruner"]
