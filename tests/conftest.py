"""Fixtures shared by the whole suite: tiny models and a registry that tests may fake."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nncore.registry import reset_registry


class TinyCNN(nn.Module):
    """conv1 -> bn1 -> relu -> conv2 -> relu -> pool -> fc: every layer type the core meets."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def make_tiny_cnn() -> TinyCNN:
    """A seeded TinyCNN (also used as ``--model tests.conftest:make_tiny_cnn`` by CLI tests)."""
    torch.manual_seed(0)
    return TinyCNN()


@pytest.fixture
def tiny_cnn() -> TinyCNN:
    return make_tiny_cnn()


@pytest.fixture
def fresh_registry():
    """Reload entry points before and after a test that fakes or disables plugins."""
    reset_registry()
    yield
    reset_registry()


def snapshot(model: nn.Module) -> tuple[dict[str, nn.Module], dict[str, torch.Tensor]]:
    """The module objects and a copy of the state of ``model``, to prove it was not touched."""
    return dict(model.named_modules()), {k: v.clone() for k, v in model.state_dict().items()}


def assert_untouched(model: nn.Module, before: tuple[dict[str, nn.Module], dict[str, torch.Tensor]]) -> None:
    modules, state = before
    now = dict(model.named_modules())
    assert now.keys() == modules.keys()
    assert all(now[name] is modules[name] for name in modules)
    current = model.state_dict()
    assert current.keys() == state.keys()
    assert all(torch.equal(current[k], state[k]) for k in state)
