"""Built-in and third-party quantizers extend the same core base: the example plugin's ternary quantizer."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import nncore
from nncore.artifacts import load_torch
from nncore.builtin_quantizers import BNNQuantizer, DoReFaQuantizer, LsqQuantizer, NaiveQuantizer, QAT_Quantizer
from nncore.compressor import Quantizer
from nncore.errors import ConfigError
from nncore.wrapper import QuantizerModuleWrapper

plugin = pytest.importorskip("nncore_plugin_example", reason="plugins_example is not installed")


def test_builtin_and_plugin_quantizers_share_the_core_base():
    info = {i.name: i for i in nncore.list_compressors()}["ternary"]
    assert info.distribution == "nncore-plugin-example" and info.kind == "quantizer"
    assert info.cls is plugin.TernaryQuantizer
    for cls in (plugin.TernaryQuantizer, BNNQuantizer, DoReFaQuantizer, LsqQuantizer, NaiveQuantizer, QAT_Quantizer):
        assert issubclass(cls, Quantizer) and cls.__mro__[1] is Quantizer


def test_int8_export_does_not_import_the_builtin_quantizers():
    code = "import sys, nncore.speedup.int8; print(any(m.startswith('nncore.builtin_quantizers') for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def ternary_layer() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.1, -0.5, 1.0, -0.05], [0.3, 0.3, -0.3, 0.3]]))
        model[0].bias.zero_()
    return model


def test_ternary_weights_by_hand_and_export(tmp_path):
    model = ternary_layer()
    quantizer = nncore.get_compressor("ternary")(model, [{"quant_types": ["weight"], "op_types": ["Linear"]}])
    quantizer.compress()
    assert isinstance(model[0], QuantizerModuleWrapper)
    # mean|w| = 2.85 / 8 = 0.35625, delta = 0.7 * that = 0.249375: 0.1 and -0.05 become 0;
    # alpha = mean of the kept |w| = (0.5 + 1.0 + 4 * 0.3) / 6 = 0.45
    alpha = 0.45
    expected = torch.tensor([[0.0, -alpha, alpha, 0.0], [alpha, alpha, -alpha, alpha]])
    weight, _ = model[0].quantized_parameters()
    assert torch.allclose(weight, expected)
    x = torch.randn(3, 4)
    assert torch.allclose(model(x), x @ expected.T)

    calibration = quantizer.export_model(str(tmp_path / "model.pth"), str(tmp_path / "calibration.pth"))
    assert calibration["0"]["weight_bits"] == 2
    assert calibration["0"]["weight_scale"].item() == pytest.approx(alpha)
    state = load_torch(tmp_path / "model.pth", "model")
    assert set(state) == {"0.weight", "0.bias"} and torch.allclose(state["0.weight"], expected)


@pytest.mark.parametrize(("entry", "message"), [
    ({"quant_bits": 3}, "config_list[0].quant_bits: 3 is greater than the maximum of 2"),
    ({"threshold_factor": 0}, "config_list[0].threshold_factor: 0 is less than or equal to the minimum of 0"),
    ({"quant_types": ["output"]}, "config_list[0].quant_types[0]: 'output' is not one of ['weight']"),
])
def test_ternary_config_is_schema_checked_like_the_builtin_ones(entry, message):
    with pytest.raises(ConfigError) as caught:
        plugin.TernaryQuantizer(ternary_layer(), [{"quant_types": ["weight"], "op_types": ["Linear"], **entry}])
    assert message in caught.value.errors
