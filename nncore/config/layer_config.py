"""The resolved, frozen configuration of one selected layer."""
from __future__ import annotations

import types
from typing import Any, Mapping

import attrs


def _freeze(options: Mapping[str, Any]) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(options))


@attrs.frozen
class LayerConfig:
    """What a ``config_list`` says about one module, after overrides and exclusions.

    :ivar name: the module's name in ``model.named_modules()``.
    :ivar op_type: the module's class name (``"Conv2d"``).
    :ivar options: the algorithm's own keys (``sparsity``, ``quant_bits`` ...), defaults filled in.
    :ivar index: the position in ``config_list`` of the entry that configured this layer.
    """

    name: str = attrs.field(validator=attrs.validators.instance_of(str))
    op_type: str = attrs.field(validator=attrs.validators.instance_of(str))
    options: Mapping[str, Any] = attrs.field(converter=_freeze, factory=dict)
    index: int = attrs.field(default=0, validator=attrs.validators.instance_of(int))

    def __deepcopy__(self, memo: dict) -> LayerConfig:
        return self  # frozen and immutable: a wrapped model deep-copies with it shared

    def __reduce__(self) -> tuple:
        return (LayerConfig, (self.name, self.op_type, dict(self.options), self.index))

    def __getitem__(self, key: str) -> Any:
        return self.options[key]

    def get(self, key: str, default: Any = None) -> Any:
        """The option ``key``, or ``default`` when the entry did not set it."""
        return self.options.get(key, default)
