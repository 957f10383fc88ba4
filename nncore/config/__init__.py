"""``config_list`` handling: JSON Schema at the door, then one frozen LayerConfig per layer."""
from nncore.config.layer_config import LayerConfig
from nncore.config.resolve import resolve_config_list
from nncore.config.schema import (
    FRACTION,
    COMMON_PROPERTIES,
    build_schema,
    schema_errors,
)

__all__ = [
    "COMMON_PROPERTIES",
    "FRACTION",
    "LayerConfig",
    "build_schema",
    "resolve_config_list",
    "schema_errors",
]
