"""nncore: prune, quantize and really speed up PyTorch models.

The public face: :func:`get_compressor`, :func:`list_compressors`, :data:`hookimpl` for plugin
authors, and the error classes. Algorithm classes are found through the registry, so
``nncore.LevelPruner`` works for every registered compressor class (built-in or third-party).
"""
from __future__ import annotations

from nncore.errors import (
    ArtifactError,
    ConfigError,
    NncoreError,
    PluginError,
    SpeedupError,
    UnknownCompressorError,
)
from nncore.hookspecs import hookimpl
from nncore.registry import get_compressor, list_compressors

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "ConfigError",
    "NncoreError",
    "PluginError",
    "SpeedupError",
    "UnknownCompressorError",
    "get_compressor",
    "hookimpl",
    "list_compressors",
    "__version__",
]


def __getattr__(name: str):
    """Resolve compressor classes (``nncore.AGPPruner``, ``nncore.AGP_Pruner``) through the registry."""
    if name.startswith("__"):
        raise AttributeError(f"module 'nncore' has no attribute {name!r}")
    from nncore.registry import find_class

    cls = find_class(name)
    if cls is None:
        raise AttributeError(f"module 'nncore' has no attribute {name!r}")
    return cls
