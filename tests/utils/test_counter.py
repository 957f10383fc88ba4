"""count_flops_params: published figures, hand counts, options, bad input, model left unchanged."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nncore import zoo
from nncore.errors import ConfigError
from nncore.utils import count_flops_params


# ------------------------------------------------------------------------ published figures
@pytest.mark.parametrize(
    ("factory", "published_macs", "published_params"),
    [
        (zoo.resnet18, 1.81e9, 11_689_512),
        (zoo.resnet50, 4.09e9, 25_557_032),
        (zoo.mobilenet_v2, 300.8e6, 3_504_872),
    ],
)
def test_published_figures(factory, published_macs, published_params):
    flops, params, results = count_flops_params(factory(), (1, 3, 224, 224), verbose=False)
    assert abs(flops - published_macs) / published_macs < 0.01
    assert params == published_params
    assert flops == sum(result["flops"] for result in results)


# ------------------------------------------------------------------------------ hand counts
def _conv_then_linear() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 8 * 8, 4))


def test_hand_count_conv_and_linear():
    flops, params, results = count_flops_params(_conv_then_linear(), (1, 3, 10, 10), verbose=False)
    conv_macs = (8 * 8 * 8) * (3 * 3 * 3)  # output elements (8 channels x 8 x 8) x kernel volume = 13824
    linear_macs = 512 * 4                  # in_features x out_features = 2048
    assert [r["flops"] for r in results] == [conv_macs, linear_macs]
    assert flops == conv_macs + linear_macs == 15_872
    assert params == (8 * 3 * 3 * 3 + 8) + (512 * 4 + 4)
    conv = results[0]
    assert conv["name"] == "0" and conv["module_type"] == "Conv2d"
    assert conv["params"] == 224 and conv["weight_shape"] == (8, 3, 3, 3)
    assert conv["input_shape"] == (1, 3, 10, 10) and conv["output_shape"] == (1, 8, 8, 8)


def test_full_mode_adds_biases():
    flops, _, _ = count_flops_params(_conv_then_linear(), (1, 3, 10, 10), verbose=False, mode="full")
    assert flops == 15_872 + 512 + 4  # one addition per conv output element and per linear output


def test_batch_is_counted():
    flops, _, _ = count_flops_params(_conv_then_linear(), torch.randn(3, 3, 10, 10), verbose=False)
    assert flops == 3 * 15_872


def test_grouped_and_depthwise_conv():
    grouped = nn.Conv2d(8, 16, 3, padding=1, groups=4)
    flops, _, _ = count_flops_params(grouped, (1, 8, 6, 6), verbose=False)
    assert flops == (16 * 6 * 6) * (8 // 4) * (3 * 3)  # 576 outputs x 2 input channels x 9 = 10368
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    flops, _, _ = count_flops_params(depthwise, (1, 8, 6, 6), verbose=False)
    assert flops == (8 * 6 * 6) * 1 * (3 * 3)  # 2592


def test_conv1d_conv3d_and_transposed_conv():
    assert count_flops_params(nn.Conv1d(2, 4, 3), (1, 2, 10), verbose=False)[0] == (4 * 8) * (2 * 3)
    assert count_flops_params(nn.Conv3d(2, 4, 3), (1, 2, 5, 5, 5), verbose=False)[0] == (4 * 27) * (2 * 27)
    transposed = nn.ConvTranspose2d(4, 2, 3, stride=2)
    # every one of the 4*5*5 input elements is scattered onto 2 output channels x 9 kernel taps
    assert count_flops_params(transposed, (1, 4, 5, 5), verbose=False)[0] == (4 * 5 * 5) * (2 * 9)


def test_linear_with_leading_dims():
    flops, _, results = count_flops_params(nn.Linear(6, 3), (2, 4, 6), verbose=False)
    assert flops == (2 * 4 * 3) * 6  # 24 output elements x 6 inputs = 144
    assert results[0]["output_shape"] == (2, 4, 3)


class _Attention(nn.Module):
    def __init__(self, batch_first: bool = True, **kwargs):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first, **kwargs)

    def forward(self, query, key, value):
        return self.attn(query, key=key, value=value, need_weights=False)[0]


def _attention_macs(batch, target_len, source_len, embed, kdim, vdim):
    projections = batch * (target_len * embed * embed + source_len * kdim * embed
                           + source_len * vdim * embed + target_len * embed * embed)
    scores = batch * target_len * source_len * embed   # Q K^T summed over the 4 heads of size 4
    weighted = batch * target_len * source_len * embed  # A V
    return projections + scores + weighted


def test_multihead_attention_hand_count():
    model = _Attention()
    query, key = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    flops, params, results = count_flops_params(model, (query, key, key), verbose=False)
    # 2560 + 3584 + 3584 + 2560 projections, 1120 + 1120 attention matmuls
    assert flops == _attention_macs(2, 5, 7, 16, 16, 16) == 14_528
    assert [r["name"] for r in results] == ["attn"]  # out_proj is counted inside, not again
    assert results[0]["params"] == params == 4 * 16 * 16 + 4 * 16


def test_multihead_attention_sequence_first_and_kdim():
    model = _Attention(batch_first=False, kdim=8, vdim=12)
    query, key, value = torch.randn(5, 2, 16), torch.randn(7, 2, 8), torch.randn(7, 2, 12)
    flops, _, _ = count_flops_params(model, (query, key, value), verbose=False)
    assert flops == _attention_macs(2, 5, 7, 16, 8, 12)


def test_full_mode_counts_norm_activation_and_pool():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
    conv = (4 * 4 * 4) * (3 * 3 * 3)  # 1728
    batchnorm = 2 * (4 * 4 * 4)       # normalise + affine per element = 128
    relu = 4 * 4 * 4                  # 64
    maxpool = (4 * 2 * 2) * (2 * 2)   # 16 outputs x 2x2 window = 64
    flops, _, results = count_flops_params(model, (1, 3, 6, 6), verbose=False, mode="full")
    assert [r["flops"] for r in results] == [conv, batchnorm, relu, maxpool]
    assert flops == 1728 + 128 + 64 + 64
    default_flops, params, default_results = count_flops_params(model, (1, 3, 6, 6), verbose=False)
    assert default_flops == conv and [r["module_type"] for r in default_results] == ["Conv2d"]
    assert params == 4 * 27 + 2 * 4  # BatchNorm parameters count even when its flops do not


def test_module_called_twice_sums_its_flops():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x))

    flops, params, results = count_flops_params(Twice(), (1, 4), verbose=False)
    assert flops == 2 * 16 and len(results) == 1 and params == 20


# ------------------------------------------------------------------------------- custom_ops
class _Bilinear(nn.Module):
    """A user module doing its work with functions: hooks cannot see inside it."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(5, 5))

    def forward(self, x):
        return x @ self.weight


def test_custom_ops_count_user_modules():
    model = nn.Sequential(_Bilinear(), nn.Linear(5, 2))
    flops, params, results = count_flops_params(model, (3, 5), verbose=False)
    assert flops == 3 * 2 * 5 and [r["name"] for r in results] == ["1"]
    assert params == 25 + 12

    def bilinear_macs(module, inputs, output):
        return inputs[0].shape[0] * 5 * 5

    flops, params, results = count_flops_params(model, (3, 5), custom_ops={_Bilinear: bilinear_macs},
                                                verbose=False)
    assert flops == 75 + 30 and params == 37
    assert results[0] == {"name": "0", "module_type": "_Bilinear", "flops": 75, "params": 25,
                          "weight_shape": (5, 5), "input_shape": (3, 5), "output_shape": (3, 5)}


def test_custom_ops_override_builtins():
    flops, _, _ = count_flops_params(_conv_then_linear(), (1, 3, 10, 10), verbose=False,
                                     custom_ops={nn.Linear: lambda module, inputs, output: 7})
    assert flops == 13_824 + 7


# ------------------------------------------------------------------------- inputs and output
def test_tuple_of_tensors_is_passed_as_arguments():
    class Add(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, a, b):
            return self.fc(a + b)

    flops, _, _ = count_flops_params(Add(), (torch.randn(4, 3), torch.randn(4, 3)), verbose=False)
    assert flops == 4 * 2 * 3


def test_verbose_prints_table(capsys):
    count_flops_params(_conv_then_linear(), (1, 3, 10, 10), verbose=True)
    printed = capsys.readouterr().out
    assert "Conv2d" in printed and "Linear" in printed and "(1, 8, 8, 8)" in printed
    assert "15,872" in printed and "2,276" in printed
    count_flops_params(_conv_then_linear(), (1, 3, 10, 10), verbose=False)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"x": "1x3x10x10"}, "x must be an input size"),
        ({"x": (1, -3, 10, 10)}, "x must be an input size"),
        ({"x": (1, 3.0, 10, 10)}, "x must be an input size"),
        ({"x": ()}, "x must be an input size"),
        ({"custom_ops": [nn.Linear]}, "custom_ops must be a dict"),
        ({"custom_ops": {nn.Linear: 3}}, r"custom_ops\['Linear'\] must be callable"),
        ({"custom_ops": {"Linear": len}}, "custom_ops key 'Linear' must be a subclass"),
        ({"mode": "fast"}, "mode must be one of"),
        ({"custom_ops": {nn.Linear: lambda module, inputs, output: "many"}}, "must return a number"),
    ],
)
def test_bad_input_raises_config_error(kwargs, message):
    arguments = {"x": (1, 3, 10, 10), "verbose": False, **kwargs}
    with pytest.raises(ConfigError, match=message):
        count_flops_params(_conv_then_linear(), **arguments)


def test_model_that_is_not_a_module_raises():
    with pytest.raises(ConfigError, match="model must be a torch.nn.Module"):
        count_flops_params(lambda x: x, (1, 3), verbose=False)


def test_model_is_left_unchanged():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5))
    model.train()
    model[3].eval()  # a mixed state must come back as it was, module by module
    state = {key: value.clone() for key, value in model.state_dict().items()}
    count_flops_params(model, torch.randn(2, 3, 6, 6), verbose=False, mode="full")
    assert [module.training for module in model.modules()] == [True, True, True, True, False]
    assert all(not module._forward_hooks for module in model.modules())
    assert all(torch.equal(state[key], value) for key, value in model.state_dict().items())


def test_model_is_restored_when_forward_fails():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(5, 2))  # shapes do not chain
    model.train()
    with pytest.raises(RuntimeError):
        count_flops_params(model, (1, 4), verbose=False)
    assert all(module.training for module in model.modules())
    assert all(not module._forward_hooks for module in model.modules())


def test_table_rows_add_up_to_the_totals(capsys):
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    flops, params, results = count_flops_params(model, (1, 1, 4, 4), verbose=True)
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines[2:lines.index(lines[1], 2)]]
    assert [row[0] for row in rows] == ["0", "1", "4"]  # the BatchNorm has a row, in model order
    assert rows[1][1] == "BatchNorm2d" and rows[1][-2:] == ["8", "-"]
    assert sum(int(row[-2].replace(",", "")) for row in rows) == params == 40 + 8 + 195
    assert sum(int(row[-1].replace(",", "")) for row in rows if row[-1] != "-") == flops == 576 + 192
    assert [r["name"] for r in results] == ["0", "4"]  # the API's results: the counted layers only
    assert "FLOPs '-': not counted in this mode" in lines[-1]


@pytest.mark.parametrize(("model", "flops_line", "params_line"), [
    (nn.Linear(4, 3), "FLOPs total: 12", "Params total: 15"),
    (nn.Linear(40, 30), "FLOPs total: 1,200 (1.20 K MACs)", "Params total: 1,230 (1.23 K)"),
    (nn.Linear(2000, 1000), "FLOPs total: 2,000,000 (2.00 M MACs)", "Params total: 2,001,000 (2.00 M)"),
])
def test_small_models_are_not_printed_as_zero_millions(capsys, model, flops_line, params_line):
    count_flops_params(model, (1, model.in_features), verbose=True)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == [flops_line, params_line]
