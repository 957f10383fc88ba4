"""JSON Schemas of ``config_list`` and the messages its violations produce."""
from __future__ import annotations

import copy
import re
from typing import Any, Iterable

import jsonschema

SELECTION_KEYS = ("op_types", "op_names", "exclude")

COMMON_PROPERTIES: dict[str, Any] = {
    "op_types": {
        "type": "array",
        "items": {"type": "string", "minLength": 1},
        "minItems": 1,
        "description": "Module class names to select ('default': the algorithm's default types).",
    },
    "op_names": {
        "type": "array",
        "items": {"type": "string"},
        "minItems": 1,
        "description": "Module names (as in model.named_modules()) to select.",
    },
    "exclude": {
        "type": "boolean",
        "description": "If true, the selected modules are removed from compression.",
    },
}

FRACTION: dict[str, Any] = {"type": "number", "minimum": 0, "maximum": 1}
"""Schema of a sparsity-like value in [0, 1]."""


def build_schema(properties: dict[str, Any], required: Iterable[str] = ()) -> dict[str, Any]:
    """The full JSON Schema of a ``config_list`` for an algorithm with these own keys.

    ``required`` keys are required in every entry that is not ``exclude: true``.
    """
    item_properties = {**copy.deepcopy(COMMON_PROPERTIES), **copy.deepcopy(properties)}
    item: dict[str, Any] = {
        "type": "object",
        "properties": item_properties,
        "additionalProperties": False,
        "anyOf": [{"required": ["op_types"]}, {"required": ["op_names"]}],
    }
    required = list(required)
    if required:
        item["if"] = {"properties": {"exclude": {"const": True}}, "required": ["exclude"]}
        item["else"] = {"required": required}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "array",
        "minItems": 1,
        "items": item,
    }


def _location(path: Iterable[Any]) -> str:
    return "config_list" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _messages(error: jsonschema.ValidationError) -> list[str]:
    where = _location(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed), key=str)
        return [f"{where}.{key}: unknown key; allowed keys are {', '.join(allowed)}" for key in unknown]
    if error.validator == "required":
        return [f"{where}.{key}: required key is missing" for key in error.validator_value if key not in error.instance]
    if error.validator == "anyOf" and isinstance(error.instance, dict):
        return [f"{where}: selects nothing; give 'op_types' or 'op_names'"]
    if error.validator == "type" and not error.absolute_path:
        return [f"config_list: must be a list of dicts, got {type(error.instance).__name__}"]
    if error.validator == "type" and len(error.absolute_path) == 1:
        return [f"{where}: must be a dict, got {type(error.instance).__name__}"]
    return [f"{where}: {error.message}"]


def _sort_key(part: Any) -> tuple[int, Any]:
    return (0, part) if isinstance(part, int) else (1, str(part))


def schema_errors(schema: dict[str, Any], config_list: Any) -> list[str]:
    """Every violation of ``schema`` by ``config_list``, one message each, in list order."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config_list), key=lambda e: [_sort_key(p) for p in e.absolute_path])
    messages = [message for error in errors for message in _messages(error)]
    return sorted(messages, key=message_order)


def message_order(message: str) -> tuple[int, str]:
    """Entry index first (numerically), then the key, so messages read in list order."""
    index = re.match(r"config_list\[(\d+)\]", message)
    return (int(index.group(1)) if index else -1, message)


def to_json_like(value: Any) -> Any:
    """Tuples to lists, recursively, so a tuple-valued config validates like a list."""
    if isinstance(value, (list, tuple)):
        return [to_json_like(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json_like(v) for k, v in value.items()}
    return value


def same_value_errors(config_list: list[dict[str, Any]], key: str, reason: str) -> list[str]:
    """Errors for entries whose ``key`` differs from the first entry that sets it.

    For algorithms where ``key`` is global (one ranking, one schedule): ``reason`` says why.
    """
    values = [(i, e[key]) for i, e in enumerate(config_list) if key in e and not e.get("exclude")]
    return [
        f"config_list[{index}].{key}: {value} differs from config_list[{values[0][0]}].{key} {values[0][1]}; {reason}"
        for index, value in values[1:]
        if value != values[0][1]
    ]
