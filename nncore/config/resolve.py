"""Turn a schema-valid ``config_list`` into one :class:`LayerConfig` per selected module."""
from __future__ import annotations

import difflib
from typing import Any, Callable, Iterable

import torch.nn as nn

from nncore.config.layer_config import LayerConfig
from nncore.config.schema import SELECTION_KEYS


def _candidates(model: nn.Module) -> dict[str, nn.Module]:
    return {name: module for name, module in model.named_modules() if name}


def _entry_selection(
    index: int,
    entry: dict[str, Any],
    modules: dict[str, nn.Module],
    default_op_types: Iterable[str],
    errors: list[str],
) -> list[str]:
    where = f"config_list[{index}]"
    op_types = entry.get("op_types")
    op_names = entry.get("op_names")
    if op_types is not None:
        wanted = set(op_types)
        if "default" in wanted:
            wanted = (wanted - {"default"}) | set(default_op_types)
    if op_names is not None:
        missing = [name for name in op_names if name not in modules]
        for name in missing:
            close = difflib.get_close_matches(name, list(modules), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            errors.append(f"{where}.op_names: the model has no module named {name!r}{hint}")
        if missing:
            return []
    selected = [
        name
        for name, module in modules.items()
        if (op_types is None or type(module).__name__ in wanted) and (op_names is None or name in op_names)
    ]
    if not selected:
        present = sorted({type(m).__name__ for m in modules.values()})
        errors.append(
            f"{where}: selects no module (op_types={op_types}, op_names={op_names}); "
            f"module types in the model: {', '.join(present)}"
        )
    return selected


def resolve_config_list(
    model: nn.Module,
    config_list: list[dict[str, Any] | None],
    *,
    default_op_types: Iterable[str],
    defaults: dict[str, Any],
    unsupported_reason: Callable[[nn.Module], str | None],
    errors: list[str],
) -> tuple[LayerConfig, ...]:
    """Apply the entries in order: later entries replace earlier ones, ``exclude`` removes.

    Problems are appended to ``errors`` (nothing is raised here); the result is in
    ``model.named_modules()`` order.

    :param defaults: values of the algorithm's own keys when an entry leaves them out.
    :param unsupported_reason: says why the algorithm cannot compress a module, or ``None``.
    """
    modules = _candidates(model)
    chosen: dict[str, LayerConfig] = {}
    for index, entry in enumerate(config_list):
        if entry is None:  # malformed: its schema errors are reported instead
            continue
        selected = _entry_selection(index, entry, modules, default_op_types, errors)
        if entry.get("exclude", False):
            for name in selected:
                chosen.pop(name, None)
            continue
        options = {**defaults, **{k: v for k, v in entry.items() if k not in SELECTION_KEYS}}
        for name in selected:
            reason = unsupported_reason(modules[name])
            if reason is not None:
                errors.append(f"config_list[{index}]: cannot compress {name!r} ({type(modules[name]).__name__}): {reason}")
                continue
            chosen[name] = LayerConfig(name=name, op_type=type(modules[name]).__name__, options=options, index=index)
    order = {name: position for position, name in enumerate(modules)}
    return tuple(sorted(chosen.values(), key=lambda config: order[config.name]))
