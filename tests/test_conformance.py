"""Every registered compressor, built-in or third-party, honours the plugin contract."""
from __future__ import annotations

import inspect
from typing import Any

import jsonschema
import pytest
import torch
import torch.nn as nn

import nncore
from nncore.compressor import Pruner, Quantizer, instance_plugin_manager, register_checked

REGISTERED = nncore.list_compressors()
INPUT_SHAPE = (2, 3, 8, 8)

# Config values for keys whose valid values cannot be guessed from their schema type alone.
SPECIAL_CONFIG: dict[str, dict[str, Any]] = {
    "bnn": {"quant_bits": 1},
}


def special_models() -> dict[str, tuple[Any, tuple[int, ...], dict[str, Any]]]:
    """Compressors that need a model of their own kind: name -> (model factory, input shape, arguments)."""
    from tests.builtin_pruners.attention_models import TinyTransformer, tiny_groups

    return {"transformer_head": (TinyTransformer, (2, 5, 8), {"head_hidden_dim": 2, "attention_name_groups": tiny_groups()})}


class ConformanceNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.norm(x.mean(dim=(2, 3))))


def example_value(spec: dict[str, Any]) -> Any:
    """A valid value for a property schema (enough for the schemas nncore's algorithms use)."""
    if "enum" in spec:
        return spec["enum"][0]
    kind = spec.get("type")
    if kind == "number":
        return 0.5 if spec.get("maximum", 1) >= 0.5 else spec["maximum"]
    if kind == "integer":
        return max(spec.get("minimum", 0), 1) + 1
    if kind == "boolean":
        return False
    if kind == "array":
        return [example_value(spec["items"])]
    if "anyOf" in spec or "oneOf" in spec:
        return example_value((spec.get("anyOf") or spec.get("oneOf"))[0])
    if kind == "string":
        return "weight"
    raise ValueError(f"no example for {spec}")


def minimal_config(cls: type) -> list[dict[str, Any]]:
    properties = cls.config_schema.get("properties", {})
    entry = {key: example_value(properties[key]) for key in cls.config_schema.get("required", ())}
    entry.update(SPECIAL_CONFIG.get(cls.name, {}))
    entry["op_types"] = list(cls.supported_op_types or ("default",))
    return [entry]


def tiny_trainer(model, optimizer, criterion=None, epoch=0, callback=None):
    optimizer.zero_grad()
    model(torch.randn(*INPUT_SHAPE)).pow(2).mean().backward()
    if callback is not None:
        callback()
    optimizer.step()


def amc_arguments(model: nn.Module, tmp_path) -> dict[str, Any]:
    """AMC keeps NNI's ``evaluator(val_loader, model)``; a short search on one batch."""
    loader = [(torch.randn(*INPUT_SHAPE), torch.zeros(INPUT_SHAPE[0], dtype=torch.long))]

    def evaluator(val_loader, m: nn.Module) -> float:
        with torch.no_grad():
            return float(-m(torch.ones(*INPUT_SHAPE)).abs().mean())

    return {"evaluator": evaluator, "val_loader": loader, "channel_round": 1, "train_episode": 2, "warmup": 1, "output_dir": str(tmp_path),
            "verbose": False}


# Constructor arguments of algorithms whose signature the generic guesses below do not fit.
SPECIAL_ARGUMENTS = {"amc": amc_arguments}


def constructor_arguments(cls: type, model: nn.Module, tmp_path) -> dict[str, Any]:
    if cls.name in SPECIAL_ARGUMENTS:
        return SPECIAL_ARGUMENTS[cls.name](model, tmp_path)
    known = {
        "optimizer": lambda: torch.optim.SGD(model.parameters(), lr=0.01),
        "trainer": lambda: tiny_trainer,
        "evaluator": lambda: (lambda m: float(-m(torch.ones(*INPUT_SHAPE)).detach().abs().mean())),
        "short_term_fine_tuner": lambda: (lambda m, *args, **kwargs: None),
        "dummy_input": lambda: torch.randn(*INPUT_SHAPE),
        "calibration_data": lambda: [torch.randn(*INPUT_SHAPE)],
        "experiment_data_dir": lambda: str(tmp_path),
    }
    parameters = inspect.signature(cls).parameters
    return {name: make() for name, make in known.items() if name in parameters}


@pytest.mark.parametrize("info", REGISTERED, ids=[info.name for info in REGISTERED])
def test_it_registers_without_plugin_validation_error(info):
    register_checked(instance_plugin_manager(), info.cls, info.cls.__qualname__)
    assert info.kind in ("pruner", "quantizer")
    assert issubclass(info.cls, Pruner if info.kind == "pruner" else Quantizer)


@pytest.mark.parametrize("info", REGISTERED, ids=[info.name for info in REGISTERED])
def test_its_schema_is_valid_json_schema(info):
    schema = info.cls.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["items"]["additionalProperties"] is False


@pytest.mark.parametrize("info", REGISTERED, ids=[info.name for info in REGISTERED])
def test_compress_on_a_tiny_model_gives_masks_shaped_like_the_weights(info, tmp_path):
    torch.manual_seed(0)
    make_model, input_shape, special = special_models().get(info.name, (ConformanceNet, INPUT_SHAPE, {}))
    model = make_model()
    arguments = {**constructor_arguments(info.cls, model, tmp_path), **special}
    compressor = info.cls(model, minimal_config(info.cls), **arguments)
    assert compressor.compress() is model
    model(torch.randn(*input_shape))
    compressor.update_epoch(1)
    compressor.step()
    assert compressor.wrappers, f"{info.name} wrapped nothing"
    if info.kind == "pruner":
        masks = compressor.masks()
        for name, entry in masks.items():
            module = compressor.all_wrappers()[name].module
            assert entry["weight"].shape == module.weight.shape
            assert entry["bias"] is None or entry["bias"].shape == module.bias.shape
