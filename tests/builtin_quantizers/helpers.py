"""Tiny models and training loops shared by the quantizer tests."""
from __future__ import annotations

import torch
import torch.nn as nn

ALL_LAYERS = ["default"]


class ConvNet(nn.Module):
    """conv1-bn1-relu, conv2-bn2 + residual-relu, max-pool, conv3 (Conv1d-free), pool, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.pool(torch.relu(x + self.bn2(self.conv2(x))))
        x = torch.relu(self.conv3(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def make_convnet(seed: int = 0) -> ConvNet:
    torch.manual_seed(seed)
    return ConvNet()


def run_training_batches(model: nn.Module, quantizer, batches: int = 3, seed: int = 1, lr: float = 0.01) -> None:
    """A few SGD steps on random data, calling ``quantizer.step()`` after each."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for _ in range(batches):
        x = torch.randn(8, 1, 8, 8, generator=generator)
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()
        quantizer.step()
