"""Filter pruners on Linear and Hugging Face Conv1D layers: output neurons, as NNI 2.x's norm pruners."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nncore.builtin_pruners import (
    ActivationMeanRankFilterPruner,
    FPGMPruner,
    L1FilterPruner,
    L2FilterPruner,
    TaylorFOWeightFilterPruner,
)
from nncore.errors import ConfigError

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402

# Four output neurons of three inputs; L1 row norms 6, 0.6, 3, 1.5 (L2: 3.74, 0.37, 3, 0.87).
ROWS = [[1.0, 2.0, 3.0], [0.1, -0.2, 0.3], [-3.0, 0.0, 0.0], [0.5, 0.5, -0.5]]


def linear_model() -> nn.Sequential:
    layer = nn.Linear(3, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(ROWS))
    return nn.Sequential(layer, nn.ReLU(), nn.Linear(4, 2))


def conv1d_model() -> nn.Sequential:
    layer = Conv1D(4, 3)  # HF stores (in_features, out_features): the neurons are columns
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(ROWS).t())
        layer.bias.fill_(0.5)
    return nn.Sequential(layer, nn.ReLU(), nn.Linear(4, 2))


@pytest.mark.parametrize("pruner_class", [L1FilterPruner, L2FilterPruner])
def test_linear_rows_and_bias_of_the_smallest_norms_are_pruned(pruner_class):
    model = linear_model()
    pruner = pruner_class(model, [{"sparsity": 0.5, "op_types": ["Linear"], "op_names": ["0"]}])
    pruner.compress()
    wrapper = pruner.wrappers["0"]
    assert wrapper.weight_mask.tolist() == [[1.0] * 3, [0.0] * 3, [1.0] * 3, [0.0] * 3]
    assert wrapper.bias_mask.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert model[0].module.weight[1].eq(0).all() and model[0].module.bias[3] == 0


@pytest.mark.parametrize("pruner_class", [L1FilterPruner, L2FilterPruner])
def test_hf_conv1d_columns_and_bias_of_the_smallest_norms_are_pruned(pruner_class):
    model = conv1d_model()
    pruner = pruner_class(model, [{"sparsity": 0.5, "op_types": ["Conv1D"]}])
    pruner.compress()
    wrapper = pruner.wrappers["0"]
    assert wrapper.weight_mask.shape == (3, 4)
    assert wrapper.weight_mask.t().tolist() == [[1.0] * 3, [0.0] * 3, [1.0] * 3, [0.0] * 3]
    assert wrapper.bias_mask.tolist() == [1.0, 0.0, 1.0, 0.0]
    out = model(torch.randn(5, 3))  # pruned neurons output exactly zero before the ReLU
    assert out.shape == (5, 2)
    assert model[0](torch.randn(5, 3))[:, [1, 3]].eq(0).all()


def test_fpgm_on_linear_prunes_the_neuron_nearest_the_others():
    layer = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]]))  # distance sums 4, 3, 5
    pruner = FPGMPruner(nn.Sequential(layer), [{"sparsity": 0.34, "op_types": ["Linear"]}])
    pruner.compress()
    assert pruner.wrappers["0"].weight_mask.amax(1).tolist() == [1.0, 0.0, 1.0]


def test_taylor_on_hf_conv1d_reads_the_gradient_columns():
    model = conv1d_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    pruner = TaylorFOWeightFilterPruner(model, [{"sparsity": 0.25, "op_types": ["Conv1D"]}], optimizer)
    pruner.compress()
    grad = torch.ones(3, 4)
    grad[:, 0] = 0.0  # neuron 0 (the largest weights) gets no gradient: importance 0
    model[0].module.weight.grad = grad
    optimizer.step()
    # sum over the column of (w * g)^2: 0, 0.14, 9, 0.75
    assert pruner.filter_importance(pruner.wrappers["0"]).tolist() == pytest.approx([0.0, 0.14, 9.0, 0.75])
    assert pruner.wrappers["0"].bias_mask.tolist() == [0.0, 1.0, 1.0, 1.0]


def test_mean_activation_on_linear_averages_the_last_dimension():
    model = linear_model()
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([0.0, 5.0, 0.0, 1.0]))
    pruner = ActivationMeanRankFilterPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"], "op_names": ["0"]}])
    pruner.compress()
    x = torch.tensor([[[1.0, 1.0, 1.0]], [[0.0, 0.0, 0.0]]])  # (batch 2, sequence 1, features 3)
    with torch.no_grad():
        model(x)
    # relu(W x + b): (6, 5.2, 0, 1.5) and (0, 5, 0, 1) -> means 3, 5.1, 0, 1.25
    assert pruner.filter_importance(pruner.wrappers["0"]).tolist() == pytest.approx([3.0, 5.1, 0.0, 1.25])
    assert pruner.wrappers["0"].bias_mask.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_default_op_types_stay_the_convolutions():
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.Flatten(), nn.Linear(4, 2))
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["default"]}])
    assert [config.name for config in pruner.layer_configs] == ["0"]


def test_other_layer_types_are_still_refused():
    model = nn.Sequential(nn.Embedding(10, 4))
    with pytest.raises(ConfigError, match="L1FilterPruner supports only Conv1d, Conv2d, Linear, Conv1D"):
        L1FilterPruner(model, [{"sparsity": 0.5, "op_names": ["0"]}])


def test_bert_ffn_neurons_as_in_the_issue():
    config = transformers.BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=8, vocab_size=30)
    torch.manual_seed(0)
    bert = transformers.BertModel(config).eval()
    names = [f"encoder.layer.{i}.intermediate.dense" for i in range(2)]
    pruner = L1FilterPruner(bert, [{"sparsity": 0.5, "op_types": ["Linear"], "op_names": names}])
    pruner.compress()
    for name in names:
        wrapper = pruner.wrappers[name]
        norms = wrapper.module.weight.detach().abs().sum(1)
        pruned = wrapper.bias_mask.eq(0).nonzero().flatten()
        assert sorted(pruned.tolist()) == sorted(norms.argsort()[:4].tolist())
    assert bert(torch.randint(0, 30, (1, 5))).last_hidden_state.shape == (1, 5, 16)


def test_gpt2_ffn_neurons_shrink_through_the_mask_file_alone(tmp_path):
    from nncore.speedup import apply_compression_results

    config = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50, n_positions=16)

    def build():
        torch.manual_seed(0)
        return transformers.GPT2Model(config).eval()

    model, ids = build(), torch.randint(0, 50, (1, 6))
    names = [f"h.{i}.mlp.c_fc" for i in range(2)]
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv1D"], "op_names": names}], None, True, ids)
    pruner.compress()
    pruner.export_model(str(tmp_path / "model.pth"), str(tmp_path / "mask.pth"))  # records int64 (1, 6) input_ids
    with torch.no_grad():
        expected = model(ids).last_hidden_state
    fresh = build()
    fresh.load_state_dict(torch.load(tmp_path / "model.pth", weights_only=True))
    apply_compression_results(fresh, str(tmp_path / "mask.pth"))
    assert [fresh.h[i].mlp.c_fc.weight.shape for i in range(2)] == [(16, 32)] * 2
    assert [fresh.h[i].mlp.c_proj.weight.shape for i in range(2)] == [(32, 16)] * 2
    with torch.no_grad():
        assert torch.allclose(fresh(ids).last_hidden_state, expected, atol=1e-5)
