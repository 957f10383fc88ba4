"""Quantizer config_list: schema and cross-key checks raise ConfigError naming the problem."""
from __future__ import annotations

import pytest

import nncore
from nncore.builtin_quantizers import BNNQuantizer, DoReFaQuantizer, LsqQuantizer, NaiveQuantizer, PtqQuantizer, QAT_Quantizer
from nncore.errors import ConfigError
from tests.conftest import assert_untouched, snapshot

from tests.builtin_quantizers.helpers import make_convnet


def config(**entry):
    return [{"quant_types": ["weight"], "op_types": ["default"], **entry}]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"quant_bits": 0}, "config_list[0].quant_bits: 0 is less than the minimum of 1"),
        ({"quant_bits": 33}, "config_list[0].quant_bits: 33 is greater than the maximum of 32"),
        ({"quant_bits": {"weight": 40}}, "config_list[0].quant_bits.weight: 40 is greater than the maximum of 32"),
        ({"quant_bits": 8.5}, "config_list[0].quant_bits: 8.5 is not of type 'integer', 'object'"),
        ({"quant_types": ["weight", "bias"]}, "config_list[0].quant_types[1]: 'bias' is not one of ['weight', 'input', 'output']"),
        ({"quant_types": []}, "config_list[0].quant_types: [] should be non-empty"),
        ({"quant_bits": {"weight": 8, "output": 8}}, "config_list[0].quant_bits.output: 'output' is not in quant_types ['weight']"),
        ({"quant_types": ["weight", "input"], "quant_bits": {"weight": 8}}, "config_list[0].quant_bits: no bits for 'input', which is in quant_types"),
        ({"quant_start_step": -1}, "config_list[0].quant_start_step: -1 is less than the minimum of 0"),
        ({"quant_scheme": "per_row"}, "config_list[0].quant_scheme: 'per_row' is not one of"),
    ],
)
def test_invalid_qat_configs_name_the_problem_and_leave_the_model_untouched(entry, message):
    model = make_convnet()
    before = snapshot(model)
    with pytest.raises(ConfigError) as caught:
        QAT_Quantizer(model, config(**entry))
    assert any(error.startswith(message) for error in caught.value.errors), caught.value.errors
    assert_untouched(model, before)


def test_an_unknown_quant_bits_key_is_rejected_by_name():
    with pytest.raises(ConfigError) as caught:
        QAT_Quantizer(make_convnet(), config(quant_bits={"bias": 8}))
    assert any("config_list[0].quant_bits" in e and "'bias'" in e for e in caught.value.errors)


@pytest.mark.parametrize("bits", [2, {"weight": 8}])
def test_bnn_refuses_more_than_one_bit(bits):
    model = make_convnet()
    before = snapshot(model)
    with pytest.raises(ConfigError, match=r"config_list\[0\]\.quant_bits(\.weight)?: \d+ is greater than the maximum of 1"):
        BNNQuantizer(model, config(quant_bits=bits))
    assert_untouched(model, before)


def test_dorefa_and_naive_quantize_weights_only():
    for cls in (DoReFaQuantizer, NaiveQuantizer):
        with pytest.raises(ConfigError, match=r"quant_types\[0\]: 'output' is not one of \['weight'\]"):
            cls(make_convnet(), [{"quant_types": ["output"], "op_types": ["default"]}])


def test_quant_types_is_required_except_for_naive():
    with pytest.raises(ConfigError, match=r"config_list\[0\]\.quant_types: required key is missing"):
        LsqQuantizer(make_convnet(), [{"quant_bits": 8, "op_types": ["default"]}])
    quantizer = NaiveQuantizer(make_convnet(), [{"op_types": ["default"]}])
    assert {c.get("quant_types")[0] for c in quantizer.layer_configs} == {"weight"}
    assert {c.get("quant_bits") for c in quantizer.layer_configs} == {8}


def test_default_op_types_are_conv_and_linear_layers():
    quantizer = QAT_Quantizer(make_convnet(), config())
    assert [c.name for c in quantizer.layer_configs] == ["conv1", "conv2", "conv3", "fc"]
    assert set(QAT_Quantizer.default_op_types) == {"Conv1d", "Conv2d", "Linear"}


def test_registry_names_and_seed_class_names():
    assert nncore.get_compressor("naive") is NaiveQuantizer
    assert nncore.get_compressor("qat") is QAT_Quantizer is nncore.QAT_Quantizer
    assert nncore.get_compressor("dorefa") is DoReFaQuantizer
    assert nncore.get_compressor("bnn") is BNNQuantizer
    assert nncore.get_compressor("lsq") is LsqQuantizer
    assert nncore.get_compressor("ptq") is PtqQuantizer
    assert all(cls.kind == "quantizer"
               for cls in (NaiveQuantizer, QAT_Quantizer, DoReFaQuantizer, BNNQuantizer, LsqQuantizer, PtqQuantizer))
