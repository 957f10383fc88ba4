"""The registry: entry-point loading, lookup, failures, autoload switch, conflicts."""
from __future__ import annotations

import types
import warnings

import pytest

import nncore
from nncore.compressor import Pruner
from nncore.errors import NncoreError, PluginError, UnknownCompressorError
from nncore.registry import core as registry_core
from nncore.registry.core import AUTOLOAD_ENV, PluginLoadWarning, Registry


class FakeEntryPoint:
    """Stands in for an installed distribution's entry point, as pluggy's own tests do."""

    def __init__(self, name: str, distribution: str, load):
        self.name = name
        self.dist = types.SimpleNamespace(name=distribution)
        self._load = load

    def load(self):
        return self._load()


def plugin_module(*classes: type) -> types.ModuleType:
    module = types.ModuleType("fake_plugin")

    @nncore.hookimpl
    def register_compressors():
        return list(classes)

    module.register_compressors = register_compressors
    return module


def make_pruner(registry_name: str) -> type:
    return type(f"{registry_name.title()}Pruner", (Pruner,), {"name": registry_name})


def fake_entry_points(monkeypatch, *extra: FakeEntryPoint) -> None:
    real = list(registry_core.entry_points())
    monkeypatch.setattr(registry_core, "entry_points", lambda: real + list(extra))


def test_get_compressor_returns_the_builtin_classes():
    from nncore.builtin_pruners import AGPPruner, LevelPruner

    assert nncore.get_compressor("level") is LevelPruner
    assert nncore.get_compressor("agp") is AGPPruner


def test_list_compressors_tells_kind_class_and_distribution():
    by_name = {info.name: info for info in nncore.list_compressors()}
    assert by_name["level"].kind == "pruner"
    assert by_name["level"].cls.__name__ == "LevelPruner"
    assert by_name["level"].distribution == "nncore"
    assert by_name["agp"].plugin.startswith("agp")


def test_classes_resolve_as_package_attributes_including_the_seed_alias():
    assert nncore.AGP_Pruner is nncore.get_compressor("agp")
    assert nncore.LevelPruner is nncore.get_compressor("level")
    with pytest.raises(AttributeError, match="NoSuchPruner"):
        nncore.NoSuchPruner


def test_unknown_name_lists_known_names_and_the_closest_match():
    with pytest.raises(UnknownCompressorError) as caught:
        nncore.get_compressor("levle")
    message = str(caught.value)
    assert "'levle'" in message and "Did you mean 'level'?" in message
    assert "agp" in message and "level" in message
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, NncoreError)


def test_fake_distribution_is_found_without_touching_the_core(monkeypatch, fresh_registry):
    extra = make_pruner("extra")
    fake_entry_points(monkeypatch, FakeEntryPoint("extra", "nncore-extra", lambda: plugin_module(extra)))
    assert nncore.get_compressor("extra") is extra
    info = {i.name: i for i in nncore.list_compressors()}["extra"]
    assert info.distribution == "nncore-extra" and info.kind == "pruner"


def test_a_plugin_that_fails_to_import_is_named_in_a_warning_and_the_others_load(monkeypatch, fresh_registry):
    def broken():
        raise ImportError("no module named 'missing_dependency'")

    fake_entry_points(monkeypatch, FakeEntryPoint("broken", "nncore-broken", broken))
    with pytest.warns(PluginLoadWarning, match=r"broken \(nncore-broken\).*missing_dependency"):
        registry = registry_core.default_registry()
    assert "level" in registry.compressors
    with pytest.raises(UnknownCompressorError, match=r"failed to load:.*broken \(nncore-broken\)"):
        registry.get("broken")


def test_autoload_switch_skips_third_party_but_keeps_builtins(monkeypatch, fresh_registry):
    extra = make_pruner("extra")
    fake_entry_points(monkeypatch, FakeEntryPoint("extra", "nncore-extra", lambda: plugin_module(extra)))
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    names = {info.name for info in nncore.list_compressors()}
    assert "level" in names and "agp" in names
    assert "extra" not in names


def test_two_plugins_claiming_one_name_raise_plugin_error_naming_both(monkeypatch, fresh_registry):
    first, second = make_pruner("dup"), make_pruner("dup")
    fake_entry_points(
        monkeypatch,
        FakeEntryPoint("one", "dist-one", lambda: plugin_module(first)),
        FakeEntryPoint("two", "dist-two", lambda: plugin_module(second)),
    )
    with pytest.raises(PluginError, match=r"'dup'.*one \(dist-one\).*two \(dist-two\)"):
        nncore.get_compressor("dup")


def test_a_misspelled_hook_argument_is_rejected_when_the_plugin_loads():
    class Typo(Pruner):
        name = "typo"

        @nncore.hookimpl
        def calc_mask(self, wrapper, sparsty):  # misspelled argument
            return None

    registry = Registry()
    with pytest.warns(PluginLoadWarning, match=r"(?s)typo-plugin.*sparsty"):
        registry.add_plugin(plugin_module(Typo), "typo-plugin", "dist-typo")
    assert "typo" not in registry.compressors


def test_a_misspelled_hook_name_is_rejected_when_the_plugin_loads():
    class Typo(Pruner):
        name = "typo"

        @nncore.hookimpl
        def calc_masks(self, wrapper):  # no such hook
            return None

    registry = Registry()
    with pytest.warns(PluginLoadWarning, match=r"(?s)typo-plugin.*calc_masks"):
        registry.add_plugin(plugin_module(Typo), "typo-plugin", "dist-typo")
    assert "typo" not in registry.compressors


def test_a_class_that_is_not_a_compressor_is_rejected():
    registry = Registry()
    with pytest.warns(PluginLoadWarning, match="not a subclass of nncore.compressor.Compressor"):
        registry.add_plugin(plugin_module(dict), "bad", "dist-bad")


def test_the_installed_example_plugin_is_found_when_installed():
    pytest.importorskip("nncore_plugin_example", reason="plugins_example is not installed")
    info = {i.name: i for i in nncore.list_compressors()}["random"]
    assert info.distribution == "nncore-plugin-example"
    assert info.cls.__name__ == "RandomPruner"


def test_loading_the_real_entry_points_warns_about_nothing(fresh_registry):
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginLoadWarning)
        registry_core.default_registry()
