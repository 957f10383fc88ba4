"""HiddenSizePruner: group importance over the residual stream, masks on every norm of it."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nncore.builtin_pruners import HiddenSizePruner
from nncore.errors import ConfigError
from nncore.speedup import ModelSpeedup


class TinyStream(nn.Module):
    """Embedding -> (norm -> linear up -> linear down, residual) -> final norm -> head."""

    def __init__(self, hidden: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.up = nn.Linear(hidden, 6, bias=False)
        self.down = nn.Linear(6, hidden, bias=False)
        self.norm2 = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, 3, bias=False)

    def forward(self, ids):
        x = self.embed(ids)
        x = x + self.down(torch.relu(self.up(self.norm1(x))))
        return self.head(self.norm2(x))


IDS = torch.tensor([[0, 1, 2, 3, 4]])


def _set(model: TinyStream, column_scale: list[float]) -> None:
    """Every stream member of hidden channel c holds ``column_scale[c]`` in all its entries."""
    scale = torch.tensor(column_scale)
    with torch.no_grad():
        model.embed.weight.copy_(scale.expand(5, 4))
        model.up.weight.copy_(scale.expand(6, 4))
        model.down.weight.copy_(scale.view(4, 1).expand(4, 6))
        model.head.weight.copy_(scale.expand(3, 4))
        for norm in (model.norm1, model.norm2):
            norm.weight.copy_(scale)
            norm.bias.zero_()


def expected_l2(model: TinyStream) -> torch.Tensor:
    """Group importance by hand: per member, squared L2 of each channel's slice over its mean."""
    members = [model.embed.weight.pow(2).sum(0), model.up.weight.pow(2).sum(0), model.down.weight.pow(2).sum(1),
               model.head.weight.pow(2).sum(0), model.norm1.weight.pow(2), model.norm2.weight.pow(2)]
    return sum(m / m.mean() for m in members)


def test_group_importance_is_the_normalized_sum_over_the_stream():
    model = TinyStream()
    _set(model, [1.0, 3.0, 0.5, 2.0])
    pruner = HiddenSizePruner(model, [{"sparsity": 0.5, "op_types": ["default"]}], dummy_input=IDS)
    importance = expected_l2(model)
    assert torch.allclose(importance, torch.tensor([1.0, 9.0, 0.25, 4.0]) / (14.25 / 4) * 6)
    # int(4 * 0.5) = 2 least important channels go: 2 and 0
    assert pruner.norm_masks["norm1"].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert pruner.norm_masks["norm2"].tolist() == [0.0, 1.0, 0.0, 1.0]


def test_l1_and_unselected_norms_of_the_stream_follow():
    model = TinyStream()
    _set(model, [1.0, -3.0, 0.5, 2.0])
    pruner = HiddenSizePruner(model, [{"sparsity": 0.25, "op_names": ["norm1"]}], dummy_input=IDS, criterion="l1")
    pruner.compress()
    masks = pruner.masks()
    assert masks["norm1"]["weight"].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert masks["norm2"]["weight"].tolist() == [1.0, 1.0, 0.0, 1.0]  # the other norm of the stream follows
    assert masks["norm2"]["bias"].tolist() == [1.0, 1.0, 0.0, 1.0]


def test_speedup_builds_the_smaller_hidden_size():
    torch.manual_seed(0)
    model = TinyStream(hidden=8)
    pruner = HiddenSizePruner(model, [{"sparsity": 0.25, "op_types": ["default"]}], dummy_input=IDS)
    pruner.compress()
    masks = pruner.masks()
    pruner.unwrap_model()
    ModelSpeedup(model, IDS, masks).speedup_model()
    assert model.embed.weight.shape == (5, 6)
    assert model.up.weight.shape == (6, 6) and model.down.weight.shape == (6, 6)
    assert model.norm1.normalized_shape == (6,) and model.head.weight.shape == (3, 6)
    assert model(IDS).shape == (1, 5, 3)


def test_bad_arguments_are_refused_before_anything_changes():
    model = TinyStream()
    with pytest.raises(ConfigError, match="criterion must be one of l1, l2"):
        HiddenSizePruner(model, [{"sparsity": 0.5, "op_types": ["default"]}], dummy_input=IDS, criterion="l3")
    with pytest.raises(ConfigError, match="needs dummy_input"):
        HiddenSizePruner(model, [{"sparsity": 0.5, "op_types": ["default"]}], dummy_input=None)
    with pytest.raises(ConfigError, match="prunes LayerNorm/RMSNorm"):
        HiddenSizePruner(model, [{"sparsity": 0.5, "op_names": ["up"]}], dummy_input=IDS)
    with pytest.raises(ConfigError, match="share one sparsity"):
        HiddenSizePruner(model, [{"sparsity": 0.5, "op_names": ["norm1"]}, {"sparsity": 0.25, "op_names": ["norm2"]}],
                         dummy_input=IDS)
    with pytest.raises(ConfigError, match="does not run through the model"):
        HiddenSizePruner(model, [{"sparsity": 0.5, "op_types": ["default"]}], dummy_input=torch.zeros(1, 2, 3))
    assert isinstance(model.norm1, nn.LayerNorm)
