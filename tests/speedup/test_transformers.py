"""Hugging Face transformers: capture, heads, FFN neurons and the hidden size, really removed."""
from __future__ import annotations

import copy

import pytest
import torch

from nncore.errors import SpeedupError
from nncore.speedup import AttentionGroup, ModelSpeedup, find_attention_groups
from nncore.speedup.masks import apply_masks
from tests.speedup.hf_models import (HEAD_DIM, HIDDEN, bert, gpt2, llama, mask_heads, mask_hidden, mask_outputs,
                                     pixels, run, smaller_hidden_reference, token_ids, vit)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def masked(model, masks):
    reference = copy.deepcopy(model)
    apply_masks(reference, masks)
    return reference


def assert_close(result, reference):
    scale = float(reference.abs().max())
    assert float((result - reference).abs().max()) <= 1e-4 * scale + 1e-6


def test_attention_groups_are_found_in_each_architecture():
    bert_groups = find_attention_groups(bert(), token_ids())
    assert bert_groups[0] == AttentionGroup(
        name="encoder.layer.0.attention.self", q="encoder.layer.0.attention.self.query",
        k="encoder.layer.0.attention.self.key", v="encoder.layer.0.attention.self.value",
        o="encoder.layer.0.attention.output.dense", num_heads=4, num_kv_heads=4, head_dim=HEAD_DIM, fused=False)
    assert len(bert_groups) == 2
    gpt2_group = find_attention_groups(gpt2(), token_ids())[1]
    assert (gpt2_group.q, gpt2_group.o, gpt2_group.fused) == ("transformer.h.1.attn.c_attn",
                                                              "transformer.h.1.attn.c_proj", True)
    llama_group = find_attention_groups(llama(), token_ids())[0]
    assert (llama_group.k, llama_group.num_heads, llama_group.num_kv_heads, llama_group.group_size) == (
        "model.layers.0.self_attn.k_proj", 4, 2, 2)
    vit_groups = find_attention_groups(vit(), pixels())
    assert [g.num_heads for g in vit_groups] == [4, 4]


def test_bert_heads_and_ffn_neurons_are_removed_exactly():
    model, inputs = bert(), token_ids()
    group = find_attention_groups(model, inputs)[0]
    masks = {}
    mask_heads(masks, model, group, heads=[1, 3])
    mask_outputs(masks, model, "encoder.layer.1.intermediate.dense", slice(0, 24))
    reference_model = masked(model, masks)
    speedup = ModelSpeedup(model, inputs, masks)
    speedup.speedup_model()
    attention = model.encoder.layer[0].attention
    assert attention.self.query.weight.shape == (16, HIDDEN)
    assert attention.self.value.weight.shape == (16, HIDDEN)
    assert attention.output.dense.weight.shape == (HIDDEN, 16)
    assert attention.self.num_attention_heads == 2 and attention.self.all_head_size == 16
    assert model.encoder.layer[1].intermediate.dense.weight.shape == (24, HIDDEN)
    assert model.encoder.layer[1].output.dense.weight.shape == (HIDDEN, 24)
    assert any("recording one forward pass" in note for note in speedup.summary.notes)
    for seed in (0, 1):
        assert_close(run(model, token_ids(seed)), run(reference_model, token_ids(seed)))


def test_gpt2_fused_heads_and_conv1d_neurons():
    model, inputs = gpt2(), token_ids()
    group = find_attention_groups(model, inputs)[0]
    masks = {}
    mask_heads(masks, model, group, heads=[0, 2])
    mask_outputs(masks, model, "transformer.h.1.mlp.c_fc", slice(0, 64))  # HF Conv1D: weight columns
    reference_model = masked(model, masks)
    ModelSpeedup(model, inputs, masks).speedup_model()
    attn = model.transformer.h[0].attn
    assert attn.c_attn.weight.shape == (HIDDEN, 3 * 16)
    assert attn.c_proj.weight.shape == (16, HIDDEN)
    assert (attn.num_heads, attn.split_size) == (2, 16)
    assert model.transformer.h[1].mlp.c_fc.weight.shape == (HIDDEN, 4 * HIDDEN - 64)
    assert model.transformer.h[1].mlp.c_proj.weight.shape == (4 * HIDDEN - 64, HIDDEN)
    longer = {"input_ids": torch.randint(1, 50, (3, 9), generator=torch.Generator().manual_seed(2))}
    assert_close(run(model, longer), run(reference_model, longer))  # the model keeps its own forward


def test_llama_grouped_query_attention_whole_groups_and_coupled_gate_and_up():
    model, inputs = llama(), token_ids()
    group = find_attention_groups(model, inputs)[0]
    masks = {}
    mask_heads(masks, model, group, heads=[2, 3], kv_heads=[1])  # the second key/value group
    mask_outputs(masks, model, "model.layers.1.mlp.gate_proj", slice(0, 16))  # up_proj follows the gate
    reference = run(masked(model, masks), inputs)
    ModelSpeedup(model, inputs, masks).speedup_model()
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (16, HIDDEN)
    assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (8, HIDDEN)
    assert attn.o_proj.weight.shape == (HIDDEN, 16)
    assert attn.num_key_value_groups == 2
    mlp = model.model.layers[1].mlp
    assert mlp.gate_proj.weight.shape == mlp.up_proj.weight.shape == (32, HIDDEN)
    assert mlp.down_proj.weight.shape == (HIDDEN, 32)
    assert_close(run(model, inputs), reference)


def test_llama_query_heads_pruned_evenly_per_group_keep_key_value_heads():
    model, inputs = llama(), token_ids()
    group = find_attention_groups(model, inputs)[0]
    masks = {}
    mask_heads(masks, model, group, heads=[1, 3])  # one query head of each group
    reference = run(masked(model, masks), inputs)
    ModelSpeedup(model, inputs, masks).speedup_model()
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (16, HIDDEN)
    assert attn.k_proj.weight.shape == (16, HIDDEN)
    assert attn.num_key_value_groups == 1
    assert_close(run(model, inputs), reference)


def test_llama_a_whole_group_and_one_query_head_of_the_other():
    model, inputs = llama(), token_ids()
    group = find_attention_groups(model, inputs)[0]
    masks = {}
    mask_heads(masks, model, group, heads=[0, 1, 2])  # group 0 entirely, one head of group 1
    reference = run(masked(model, masks), inputs)
    ModelSpeedup(model, inputs, masks).speedup_model()
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == attn.k_proj.weight.shape == (8, HIDDEN)  # one key/value head, one query
    assert attn.num_key_value_groups == 1
    assert_close(run(model, inputs), reference)


def test_llama_uneven_query_heads_are_kept_and_the_result_stays_exact():
    model, inputs = llama(), token_ids()
    group = find_attention_groups(model, inputs)[0]
    masks = {}
    mask_heads(masks, model, group, heads=[0])  # one group would keep 1 query head, the other 2
    reference = run(masked(model, masks), inputs)
    speedup = ModelSpeedup(model, inputs, masks)
    speedup.speedup_model()
    assert any("same number of query heads" in reason for reason in speedup.summary.kept_by)
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (32, HIDDEN)
    assert_close(run(model, inputs), reference)


@pytest.mark.parametrize("build, inputs", [(bert, token_ids), (gpt2, token_ids), (llama, token_ids), (vit, pixels)],
                         ids=["bert", "gpt2", "llama", "vit"])
def test_hidden_size_equals_the_smaller_architecture(build, inputs):
    model, data = build(), inputs()
    removed = [0, 5, 9, 30]
    reference = smaller_hidden_reference(model, removed)
    ModelSpeedup(model, data, mask_hidden(model, removed)).speedup_model()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm) or type(m).__name__.endswith("RMSNorm")]
    assert all(norm.weight.shape == (HIDDEN - 4,) for norm in norms)
    keep = [i for i in range(HIDDEN) if i not in removed]
    result, expected = run(model, data), run(reference, data)
    if result.shape[-1] != expected.shape[-1]:  # the hidden states themselves: kept channels only
        expected = expected[..., keep]
    assert_close(result, expected)


def test_tied_embeddings_stay_tied():
    model, inputs = gpt2(), token_ids()
    ModelSpeedup(model, inputs, mask_hidden(model, [1, 2])).speedup_model()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.weight.shape == (50, HIDDEN - 2)


def test_norms_with_different_masks_are_refused_and_the_model_is_unchanged():
    model, inputs = llama(), token_ids()
    masks = mask_hidden(model, [3])
    masks["model.norm"]["weight"][3] = 1
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(SpeedupError, match="same mask") as error:
        ModelSpeedup(model, inputs, masks).speedup_model()
    assert "model.norm" in str(error.value)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


class _Untraceable(torch.nn.Module):
    """fx cannot trace it (data-dependent branch); its forward has a literal size."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 8)
        self.b = torch.nn.Linear(8, 2)

    def forward(self, x):
        if x.sum() > 1e9:
            return x
        return self.b(self.a(x).view(x.shape[0], 8))


def test_a_literal_size_that_no_longer_holds_is_reported_and_rolled_back():
    model = _Untraceable()
    masks = {"a": {"weight": torch.ones(8, 4), "bias": torch.ones(8)}}
    masks["a"]["weight"][:4] = 0
    masks["a"]["bias"][:4] = 0
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(SpeedupError, match="unchanged"):
        ModelSpeedup(model, torch.randn(2, 4), masks).speedup_model()
    assert model.a.weight.shape == (8, 4)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


class LayerNorm2d(torch.nn.LayerNorm):
    """torchvision's channels-first LayerNorm: a subclass with its own forward (looked into)."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = torch.nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvStream(torch.nn.Module):
    """Stem conv -> LayerNorm2d -> residual depthwise block -> LayerNorm2d -> pooled head."""

    def __init__(self, untraceable: bool = False) -> None:
        super().__init__()
        self.untraceable = untraceable
        self.stem, self.norm1 = torch.nn.Conv2d(3, 8, 2, 2), LayerNorm2d(8)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.norm2, self.head = LayerNorm2d(8), torch.nn.Linear(8, 3)

    def forward(self, x):
        if self.untraceable and x.sum() > 1e9:
            return x
        x = self.norm1(self.stem(x))
        x = x + self.dw(x)
        return self.head(self.norm2(x).mean((2, 3)))


@pytest.mark.parametrize("untraceable", [False, True], ids=["fx", "recorded"])
def test_channels_first_layer_norm_follows_the_stream(untraceable):
    torch.manual_seed(0)
    model = ConvStream(untraceable).eval()
    keep = torch.ones(8)
    keep[[1, 6]] = 0
    masks = {name: {"weight": keep.clone(), "bias": keep.clone()} for name in ("norm1", "norm2")}
    x = torch.randn(2, 3, 8, 8)
    ModelSpeedup(model, x, masks).speedup_model()
    assert model.stem.out_channels == model.dw.out_channels == 6
    assert model.norm1.normalized_shape == model.norm2.normalized_shape == (6,)
    assert model.head.weight.shape == (3, 6)
    assert model(torch.randn(3, 3, 8, 8)).shape == (3, 3)


class InterleavedGQA(torch.nn.Module):
    """Hand-written grouped-query attention: key/value heads repeated with repeat_interleave."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = torch.nn.Linear(16, 16), torch.nn.Linear(16, 8), torch.nn.Linear(16, 8)
        self.o = torch.nn.Linear(16, 16)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, 4, 4).transpose(1, 2)
        k = self.k(x).view(b, n, 2, 4).transpose(1, 2).repeat_interleave(2, dim=1)
        v = self.v(x).view(b, n, 2, 4).transpose(1, 2).repeat_interleave(2, dim=1)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.o(out.transpose(1, 2).reshape(b, n, 16))


def test_repeat_interleave_grouped_query_attention():
    torch.manual_seed(0)
    model, x = InterleavedGQA().eval(), torch.randn(2, 5, 16)
    group = find_attention_groups(model, x)[0]
    assert (group.q, group.k, group.o, group.num_heads, group.num_kv_heads) == ("q", "k", "o", 4, 2)
    masks = {}
    mask_heads(masks, model, group, heads=[2, 3], kv_heads=[1])
    reference = masked(model, masks)
    ModelSpeedup(model, x, masks).speedup_model()
    assert model.q.weight.shape == (8, 16) and model.k.weight.shape == (4, 16) and model.o.weight.shape == (16, 8)
    assert_close(model(x), reference(x))
