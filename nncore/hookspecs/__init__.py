"""The plugin contract of nncore: every hook an algorithm or a plugin can implement.

How a call is routed (which implementation answers)
---------------------------------------------------
There are two plugin managers, both of project ``"nncore"``:

* **The registry manager** (one per process, :func:`nncore.registry.plugin_manager`) loads
  every entry point of the group ``nncore``. Its hooks are the *registry* hooks
  (:mod:`nncore.hookspecs.registry`): each plugin answers ``register_compressors()`` with
  the compressor classes it provides. All answers are collected.

* **One manager per compressor instance.** The algorithm's own hookimpls (the
  ``@hookimpl`` methods of the compressor class) are registered *first*, then the extra
  plugins the user passed as ``plugins=[...]``. pluggy calls the most recently
  registered implementation first, so a user plugin runs before the algorithm:

  - ``calc_mask`` and ``quantize_weight`` / ``quantize_input`` / ``quantize_output`` are
    *firstresult*: the first implementation that returns something other than ``None``
    answers, the rest are skipped. A user plugin overrides one layer by returning a
    result for it and ``None`` for every other layer; the algorithm answers the rest.
    ``tryfirst=True`` / ``trylast=True`` reorder as usual in pluggy.
  - ``update_epoch``, ``step`` and ``validate_config`` are *broadcast*: every
    implementation is called (user plugins first, then the algorithm).

On a compressor class, ``update_epoch`` and ``step`` are also the public methods that
broadcast these hooks, so the algorithm implements them under another method name:
``@hookimpl(specname="step") def on_step(self): ...`` (a class that shadows the public
method is refused when it is defined).

Hooks are always called with keyword arguments; an implementation declares only the
arguments it uses. pluggy checks each implementation against these specs when it is
registered, so a misspelled hook or argument fails at registration, naming the plugin.
"""
from __future__ import annotations

import pluggy

PROJECT_NAME = "nncore"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
"""Marker for hook specifications (used only inside :mod:`nncore.hookspecs`)."""

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marker plugin authors put on their hook implementations: ``@nncore.hookimpl``."""

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]
