"""The jobs' training loop: the loss it reports is the mean per batch."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nncore.data import tensor_loaders, train_one_epoch


def test_train_one_epoch_returns_the_mean_loss_per_batch() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(20, 4), torch.arange(20) % 3
    loader, _ = tensor_loaders(x, y, x, y, batch_size=5)
    with torch.no_grad():
        expected = float(nn.functional.cross_entropy(model(x), y))  # equal batches: mean of means = overall mean
    loss = train_one_epoch(model, loader, torch.optim.SGD(model.parameters(), lr=0.0))
    assert loss == pytest.approx(expected)
    assert model.training
