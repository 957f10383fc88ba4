"""The exceptions nncore raises. Every one is an :class:`NncoreError`.

Errors about user input also subclass :class:`ValueError`, so code written against
plain Python conventions (``except ValueError``) keeps working.
"""
from __future__ import annotations


class NncoreError(Exception):
    """Base class of every error nncore raises on purpose."""


class ConfigError(NncoreError, ValueError):
    """A ``config_list`` (or another user setting) is invalid.

    ``errors`` holds every problem found, one message each; ``str(err)`` lists them all.
    """

    def __init__(self, errors: list[str] | str, *, header: str = "invalid config_list"):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        lines = "\n".join(f"  - {message}" for message in self.errors)
        super().__init__(f"{header} ({len(self.errors)} problem(s)):\n{lines}")


class UnknownCompressorError(NncoreError, ValueError):
    """No registered compressor has the requested name."""


class PluginError(NncoreError):
    """A plugin is broken or conflicts with another plugin."""


class SpeedupError(NncoreError):
    """Model speedup cannot honour the masks (raised in ``strict`` mode or on bad input)."""


class ArtifactError(NncoreError, ValueError):
    """A file given to nncore (mask file, calibration file, model file) is not what it should be."""
