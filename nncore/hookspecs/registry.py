"""Registry hooks: answered by every plugin module that an ``nncore`` entry point names."""
from __future__ import annotations

from nncore.hookspecs import hookspec


@hookspec
def register_compressors() -> list[type]:
    """Return the compressor classes this plugin provides.

    Each class is a subclass of :class:`nncore.compressor.Compressor` with a unique
    ``name`` (the registry name, e.g. ``"agp"``). Every plugin's answer is collected.
    """
