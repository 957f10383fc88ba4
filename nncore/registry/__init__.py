"""The algorithm registry: one plugin manager that loads every ``nncore`` entry point.

Use :func:`get_compressor` / :func:`list_compressors`; plugin authors declare an entry point
in the group ``nncore`` naming a module (or object) that implements
:func:`nncore.hookspecs.registry.register_compressors`.
"""
from nncore.registry.core import (
    AUTOLOAD_ENV,
    CompressorInfo,
    Registry,
    default_registry,
    find_class,
    get_compressor,
    list_compressors,
    plugin_manager,
    reset_registry,
)

__all__ = [
    "AUTOLOAD_ENV",
    "CompressorInfo",
    "Registry",
    "default_registry",
    "find_class",
    "get_compressor",
    "list_compressors",
    "plugin_manager",
    "reset_registry",
]
