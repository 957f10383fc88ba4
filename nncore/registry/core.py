"""Entry-point loading, name lookup and conflict checks for compressor classes."""
from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import warnings
from typing import Any, Iterable

import attrs
import pluggy

from nncore.errors import PluginError, UnknownCompressorError
from nncore.hookspecs import PROJECT_NAME

ENTRY_POINT_GROUP = "nncore"
AUTOLOAD_ENV = "NNCORE_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_DISTRIBUTION = "nncore"
REGISTRY_HOOKSPEC_MODULES = ("nncore.hookspecs.registry", "nncore.hookspecs.speedup")


class PluginLoadWarning(UserWarning):
    """A plugin could not be loaded; the others were."""


@attrs.frozen
class CompressorInfo:
    """What the registry knows of one compressor name."""

    name: str
    kind: str
    cls: type
    distribution: str
    plugin: str


def entry_points() -> Iterable[Any]:
    """The entry points of group ``nncore`` (tests replace this to fake distributions)."""
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def _distribution_name(entry_point: Any) -> str:
    dist = getattr(entry_point, "dist", None)
    return getattr(dist, "name", None) or "<unknown distribution>"


def _is_builtin(distribution: str) -> bool:
    return distribution.replace("_", "-").lower() == BUILTIN_DISTRIBUTION


class Registry:
    """Loads plugins into one ``pluggy.PluginManager("nncore")`` and indexes their compressors."""

    def __init__(self) -> None:
        self.plugin_manager = pluggy.PluginManager(PROJECT_NAME)
        for module_name in REGISTRY_HOOKSPEC_MODULES:
            try:
                self.plugin_manager.add_hookspecs(importlib.import_module(module_name))
            except ModuleNotFoundError:
                continue
        self.compressors: dict[str, CompressorInfo] = {}
        self.failed: dict[str, str] = {}

    def load_entry_points(self) -> None:
        """Register every entry point of group ``nncore`` (only nncore's own when autoload is off)."""
        autoload = os.environ.get(AUTOLOAD_ENV, "") in ("", "0")
        for entry_point in entry_points():
            distribution = _distribution_name(entry_point)
            if not autoload and not _is_builtin(distribution):
                continue
            label = f"{entry_point.name} ({distribution})"
            try:
                plugin = entry_point.load()
            except Exception as exc:  # a broken plugin must not break the others
                self._report_failure(label, f"import failed: {type(exc).__name__}: {exc}")
                continue
            self.add_plugin(plugin, label, distribution)

    def add_plugin(self, plugin: Any, label: str, distribution: str) -> None:
        """Register one plugin object and index the compressor classes it provides."""
        try:
            self.plugin_manager.register(plugin, name=label)
            provided = self._call_register_compressors(plugin)
            self._validate_classes(provided)
        except (pluggy.PluginValidationError, PluginError, TypeError, ValueError) as exc:
            if self.plugin_manager.is_registered(plugin):
                self.plugin_manager.unregister(plugin)
            self._report_failure(label, str(exc))
            return
        for cls in provided:
            self._index(cls, label, distribution)

    def _call_register_compressors(self, plugin: Any) -> list[type]:
        impl = getattr(plugin, "register_compressors", None)
        if impl is None:
            return []
        provided = impl()
        if not isinstance(provided, (list, tuple)) or not all(isinstance(c, type) for c in provided):
            raise PluginError("register_compressors() must return a list of compressor classes")
        return list(provided)

    def _validate_classes(self, classes: list[type]) -> None:
        from nncore.compressor import Compressor, instance_plugin_manager, register_checked

        for cls in classes:
            if not issubclass(cls, Compressor):
                raise PluginError(f"{cls.__qualname__} is not a subclass of nncore.compressor.Compressor")
            if not isinstance(getattr(cls, "name", None), str) or not cls.name:
                raise PluginError(f"{cls.__qualname__} has no registry `name`")
            register_checked(instance_plugin_manager(), cls, cls.__qualname__)

    def _index(self, cls: type, label: str, distribution: str) -> None:
        known = self.compressors.get(cls.name)
        if known is not None and known.cls is not cls:
            raise PluginError(
                f"two plugins claim the compressor name {cls.name!r}: "
                f"{known.plugin} ({known.cls.__module__}.{known.cls.__qualname__}) and "
                f"{label} ({cls.__module__}.{cls.__qualname__})"
            )
        self.compressors[cls.name] = CompressorInfo(cls.name, cls.kind, cls, distribution, label)

    def _report_failure(self, label: str, reason: str) -> None:
        self.failed[label] = reason
        warnings.warn(f"nncore plugin {label} was not loaded: {reason}", PluginLoadWarning, stacklevel=3)

    def get(self, name: str) -> type:
        """The compressor class registered as ``name``; :class:`UnknownCompressorError` if none."""
        if not isinstance(name, str):
            raise UnknownCompressorError(f"compressor name must be a string, got {type(name).__name__}")
        info = self.compressors.get(name)
        if info is not None:
            return info.cls
        known = sorted(self.compressors)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        failed = f" Plugins that failed to load: {', '.join(self.failed)}." if self.failed else ""
        raise UnknownCompressorError(
            f"unknown compressor {name!r}.{hint} Known compressors: {', '.join(known)}.{failed}"
        )

    def find_class(self, class_name: str) -> type | None:
        """A registered class by its class name or one of its ``aliases``."""
        for info in self.compressors.values():
            if class_name == info.cls.__name__ or class_name in getattr(info.cls, "aliases", ()):
                return info.cls
        return None


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry, loaded from entry points on first use."""
    global _default
    if _default is None:
        registry = Registry()
        registry.load_entry_points()
        _default = registry
    return _default


def reset_registry() -> None:
    """Forget the loaded registry; the next call reloads entry points (for tests and notebooks)."""
    global _default
    _default = None


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide ``pluggy.PluginManager("nncore")`` holding every loaded plugin."""
    return default_registry().plugin_manager


def get_compressor(name: str) -> type:
    """Return the compressor class registered under ``name`` (e.g. ``get_compressor("agp")``).

    :raises UnknownCompressorError: no such name; the message lists the known names and the
        closest match.
    """
    return default_registry().get(name)


def list_compressors() -> list[CompressorInfo]:
    """Every registered compressor: name, kind (pruner / quantizer), class and distribution."""
    return sorted(default_registry().compressors.values(), key=lambda info: (info.kind, info.name))


def find_class(class_name: str) -> type | None:
    """A registered compressor class by class name or alias (``"AGP_Pruner"``), else ``None``."""
    return default_registry().find_class(class_name)
