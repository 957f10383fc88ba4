"""The reference architectures match torchvision's parameter counts and module names."""
from __future__ import annotations

import pytest
import torch

from nncore import zoo


def _param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("factory", "expected"),
    [(zoo.resnet18, 11_689_512), (zoo.resnet50, 25_557_032), (zoo.mobilenet_v2, 3_504_872)],
)
def test_param_counts_match_torchvision(factory, expected):
    assert _param_count(factory()) == expected


def test_module_names_follow_torchvision():
    resnet_names = {name for name, _ in zoo.resnet18().named_modules()}
    assert {"conv1", "bn1", "layer1.0.conv1", "layer2.0.downsample.0", "layer4.1.bn2", "fc"} <= resnet_names
    mobilenet_names = {name for name, _ in zoo.mobilenet_v2().named_modules()}
    assert {"features.0.0", "features.1.conv.0.0", "features.2.conv.1.0", "features.18.0",
            "classifier.1"} <= mobilenet_names


def test_num_classes_and_in_channels():
    model = zoo.resnet18(num_classes=7, in_channels=1).eval()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    # 1000-class fc (512*1000 + 1000) replaced by a 7-class one (512*7 + 7); stem 3 -> 1 channel.
    expected = 11_689_512 - (512 * 1000 + 1000) + (512 * 7 + 7) - 64 * 2 * 7 * 7
    assert _param_count(model) == expected
    assert zoo.mobilenet_v2(num_classes=5, in_channels=4).eval()(torch.randn(1, 4, 32, 32)).shape == (1, 5)


def test_mobilenet_width_mult_shrinks_model():
    assert _param_count(zoo.mobilenet_v2(width_mult=0.5)) < _param_count(zoo.mobilenet_v2())


def test_digits_cnn_output_shape():
    model = zoo.DigitsCNN()
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    assert model.eval()(torch.randn(1, 1, 8, 8)).shape == (1, 10)
