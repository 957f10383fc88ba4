"""config_list: schema errors (all at once, located), overrides, exclusion, untouched model."""
from __future__ import annotations

import jsonschema
import pytest
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nncore.builtin_pruners import AGPPruner, LevelPruner
from nncore.errors import ConfigError
from tests.conftest import assert_untouched, make_tiny_cnn, snapshot


def errors_of(model, config_list, cls=LevelPruner) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        cls(model, config_list)
    return caught.value.errors


def test_every_problem_is_reported_at_once_with_index_key_and_what_is_allowed(tiny_cnn):
    errors = errors_of(tiny_cnn, [
        {"sparsity": 0.5, "op_types": ["Conv2d"]},
        {"sparsity": 1.5, "op_types": ["Conv2d"], "sparsty": 0.1},
        {"op_types": ["Linear"]},
        {"sparsity": 0.5},
        "not a dict",
    ])
    assert errors == [
        "config_list[1].sparsity: 1.5 is greater than the maximum of 1",
        "config_list[1].sparsty: unknown key; allowed keys are exclude, op_names, op_types, sparsity",
        "config_list[2].sparsity: required key is missing",
        "config_list[3]: selects nothing; give 'op_types' or 'op_names'",
        "config_list[4]: must be a dict, got str",
    ]


def test_the_error_is_a_value_error_whose_message_lists_every_problem(tiny_cnn):
    with pytest.raises(ValueError) as caught:
        LevelPruner(tiny_cnn, [{"sparsity": -1, "op_types": ["Conv2d"]}, {"sparsity": "x", "op_names": ["fc"]}])
    message = str(caught.value)
    assert "config_list[0].sparsity: -1 is less than the minimum of 0" in message
    assert "config_list[1].sparsity: 'x' is not of type 'number'" in message


def test_a_config_list_that_is_not_a_list_is_named():
    assert errors_of(make_tiny_cnn(), {"sparsity": 0.5}) == ["config_list: must be a list of dicts, got dict"]


@pytest.mark.parametrize("entry, expected", [
    ({"sparsity": 0.5, "op_names": ["head"]}, "config_list[0].op_names: the model has no module named 'head'"),
    ({"sparsity": 0.5, "op_names": ["con1"]}, "config_list[0].op_names: the model has no module named 'con1'; did you mean 'conv1'?"),
    ({"sparsity": 0.5, "op_types": ["Conv3d"]}, "config_list[0]: selects no module (op_types=['Conv3d'], op_names=None); module types in the model: AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Linear"),
    ({"sparsity": 0.5, "op_types": ["AdaptiveAvgPool2d"]}, "config_list[0]: cannot compress 'pool' (AdaptiveAvgPool2d): it has no weight parameter"),
])
def test_selection_problems_are_errors(tiny_cnn, entry, expected):
    assert errors_of(tiny_cnn, [entry]) == [expected]


def test_later_entries_override_earlier_ones_and_exclude_removes(tiny_cnn):
    layers = LevelPruner.check_config(tiny_cnn, [
        {"sparsity": 0.8, "op_types": ["default"]},
        {"sparsity": 0.6, "op_names": ["conv2", "fc"]},
        {"exclude": True, "op_names": ["fc"]},
    ])
    assert [(c.name, c.op_type, c["sparsity"], c.index) for c in layers] == [
        ("conv1", "Conv2d", 0.8, 0),
        ("conv2", "Conv2d", 0.6, 1),
    ]


def test_default_op_types_follow_the_algorithm_and_can_be_mixed_with_names(tiny_cnn):
    layers = LevelPruner.check_config(tiny_cnn, [{"sparsity": 0.5, "op_types": ["default", "BatchNorm2d"]}])
    assert [c.name for c in layers] == ["conv1", "bn1", "conv2", "fc"]


def test_op_types_and_op_names_together_select_their_intersection(tiny_cnn):
    layers = LevelPruner.check_config(tiny_cnn, [{"sparsity": 0.5, "op_types": ["Conv2d"], "op_names": ["conv2", "fc"]}])
    assert [c.name for c in layers] == ["conv2"]


def test_schema_defaults_are_filled_in(tiny_cnn):
    (layer,) = AGPPruner.check_config(tiny_cnn, [{"final_sparsity": 0.5, "end_epoch": 4, "op_names": ["fc"]}])
    assert dict(layer.options) == {"initial_sparsity": 0, "final_sparsity": 0.5, "start_epoch": 0, "end_epoch": 4, "frequency": 1}


def test_a_tuple_config_list_is_accepted_like_a_list(tiny_cnn):
    layers = LevelPruner.check_config(tiny_cnn, ({"sparsity": 0.5, "op_types": ("Linear",)},))
    assert [c.name for c in layers] == ["fc"]


def test_layer_configs_are_frozen(tiny_cnn):
    (layer,) = LevelPruner.check_config(tiny_cnn, [{"sparsity": 0.5, "op_names": ["fc"]}])
    with pytest.raises(Exception):
        layer.name = "other"
    with pytest.raises(TypeError):
        layer.options["sparsity"] = 0.9


def test_a_bad_config_list_leaves_the_model_exactly_as_it_was(tiny_cnn):
    before = snapshot(tiny_cnn)
    with pytest.raises(ConfigError):
        LevelPruner(tiny_cnn, [{"sparsity": 0.5, "op_types": ["Conv2d"]}, {"sparsity": 2, "op_names": ["fc"]}])
    assert_untouched(tiny_cnn, before)


@pytest.mark.parametrize("cls", [LevelPruner, AGPPruner])
def test_the_schema_is_valid_json_schema(cls):
    jsonschema.Draft202012Validator.check_schema(cls.json_schema())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-2, 2) | st.just(float("nan")) | st.text(max_size=8)
    | st.sampled_from(["Conv2d", "Linear", "default", "conv1", "fc", "BatchNorm2d"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)
keys = st.sampled_from(["sparsity", "op_types", "op_names", "exclude", "final_sparsity", "end_epoch", "start_epoch", "frequency", "bogus"])
entries = st.dictionaries(keys, json_values | st.lists(st.sampled_from(["Conv2d", "Linear", "default", "conv1", "fc", "nope"]), max_size=3), max_size=5)
config_lists = st.lists(entries | json_values, max_size=4) | json_values


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_list=config_lists, cls=st.sampled_from([LevelPruner, AGPPruner]))
def test_random_config_lists_only_ever_raise_config_error(config_list, cls):
    model = _FUZZ_MODEL
    try:
        layers = cls.check_config(model, config_list)
    except ConfigError as error:
        assert error.errors and all(isinstance(m, str) and m.startswith("config_list") for m in error.errors)
    else:
        assert all(isinstance(layer.name, str) for layer in layers)


_FUZZ_MODEL: nn.Module = make_tiny_cnn()
