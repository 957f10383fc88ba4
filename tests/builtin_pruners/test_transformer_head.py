"""TransformerHeadPruner on hand-written attention, nn.MultiheadAttention and HF Conv1D projections."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from nncore.artifacts import load_masks
from nncore.builtin_pruners import TransformerHeadPruner
from nncore.builtin_pruners.head_criteria import HeadStatistics, ObservedProjection, mha_head_outputs
from nncore.errors import ConfigError, NncoreError
from nncore.registry import get_compressor
from tests.builtin_pruners.attention_models import TinyTransformer, make_tiny_transformer, tiny_groups
from tests.conftest import assert_untouched, snapshot

ALL = [{"sparsity": 0.5, "op_types": ["default"]}]


def prune(model: nn.Module, config_list=ALL, head_hidden_dim: int = 2, groups=None, **kwargs) -> TransformerHeadPruner:
    groups = tiny_groups(len(model.layers)) if groups is None else groups
    pruner = TransformerHeadPruner(model, config_list, head_hidden_dim, groups, verbose=False, **kwargs)
    pruner.compress()
    return pruner


def set_head_blocks(linear: nn.Linear, blocks: list[list[list[float]]]) -> None:
    """Set the rows of each head (``head_dim`` rows of ``in`` weights) and zero the bias."""
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(blocks).reshape(linear.weight.shape))
        linear.bias.zero_()


def first_entry_scores(linear: nn.Linear, values: list[float]) -> None:
    """Head ``h``'s block is ``values[h]`` in its first entry, zero elsewhere: its L1 and L2 norm."""
    heads = len(values)
    blocks = torch.zeros(heads, linear.weight.shape[0] // heads, linear.weight.shape[1])
    blocks[:, 0, 0] = torch.tensor(values)
    set_head_blocks(linear, blocks.tolist())


def zero_kv(layer: nn.Module) -> None:
    with torch.no_grad():
        for linear in (layer.k, layer.v):
            linear.weight.zero_()
            linear.bias.zero_()


def head_rows_zero(mask: torch.Tensor, head_dim: int, axis: int = 0) -> list[int]:
    """Heads whose features along ``axis`` are all zero in ``mask``."""
    features = mask.movedim(axis, 0).reshape(mask.shape[axis], -1)
    heads = features.reshape(-1, head_dim, features.shape[1])
    return [h for h in range(heads.shape[0]) if bool((heads[h] == 0).all())]


# -- weight criteria, by hand ---------------------------------------------------------------------------

# Query heads (2 rows x 2 inputs each) with different L1 and L2 rankings; K and V are 0.5 everywhere,
# so every head gets L1 = 2 and L2 = 1 from each of them.
Q_BLOCKS = [[[3, 0], [0, 0]], [[1, 1], [1, 1]], [[2.5, 0], [0, 0]], [[1.5, 1.5], [1.5, 0]]]
L1_SCORES = [(3 + 4) / 3, (4 + 4) / 3, (2.5 + 4) / 3, (4.5 + 4) / 3]
L2_SCORES = [(3 + 2) / 3, (2 + 2) / 3, (2.5 + 2) / 3, (1.5 * math.sqrt(3) + 2) / 3]


def hand_weight_model() -> TinyTransformer:
    model = make_tiny_transformer(layers=1, embed=2, heads=4, head_dim=2)
    layer = model.layers[0]
    set_head_blocks(layer.q, Q_BLOCKS)
    for linear in (layer.k, layer.v):
        set_head_blocks(linear, [[[0.5, 0.5], [0.5, 0.5]]] * 4)
    return model


@pytest.mark.parametrize("criterion, scores, pruned", [
    ("l1_weight", L1_SCORES, {0, 2}),
    ("l2_weight", L2_SCORES, {1, 2}),
])
def test_weight_criteria_are_the_mean_of_the_q_k_v_head_norms(criterion, scores, pruned):
    model = hand_weight_model()
    pruner = prune(model, ranking_criterion=criterion)
    assert pruner.pruned_heads == {0: pruned}
    # After masking the pruned heads score zero; the kept ones keep their hand-computed score.
    expected = [0.0 if h in pruned else scores[h] for h in range(4)]
    assert pruner.head_scores()[0].tolist() == pytest.approx(expected)


def test_masks_cover_q_k_v_rows_and_biases_and_o_columns():
    model = hand_weight_model()
    with torch.no_grad():
        model.layers[0].q.bias.fill_(1.0)
    pruner = prune(model)  # l1_weight: heads 0 and 2 go
    masks = pruner.masks()
    rows = torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1])
    for name in ("layers.0.q", "layers.0.k", "layers.0.v"):
        assert torch.equal(masks[name]["weight"], rows.view(8, 1).expand(8, 2))
        assert torch.equal(masks[name]["bias"], rows)
    assert torch.equal(masks["layers.0.o"]["weight"], rows.view(1, 8).expand(2, 8))
    assert torch.equal(masks["layers.0.o"]["bias"], torch.ones(2))
    layer = model.layers[0]
    assert layer.q.module.weight[[0, 1, 4, 5]].eq(0).all() and layer.q.module.bias[[0, 1, 4, 5]].eq(0).all()
    assert torch.equal(layer.q.module.weight[[2, 3]], torch.tensor(Q_BLOCKS[1], dtype=torch.float32))


@pytest.mark.parametrize("sparsity, count", [(0.1, 0), (0.34, 2), (0.5, 3), (0.99, 5)])
def test_sparsity_prunes_int_of_heads_times_sparsity(sparsity, count):
    model = make_tiny_transformer(layers=1, embed=4, heads=6, head_dim=2)
    pruner = prune(model, [{"sparsity": sparsity, "op_types": ["Linear"]}])
    assert len(pruner.pruned_heads[0]) == count
    assert len(head_rows_zero(pruner.masks()["layers.0.q"]["weight"], 2)) == count
    assert len(head_rows_zero(pruner.masks()["layers.0.o"]["weight"], 2, axis=1)) == count


def two_scaled_layers() -> TinyTransformer:
    model = make_tiny_transformer(layers=2, embed=2, heads=4, head_dim=2)
    for layer, values in zip(model.layers, ([13, 10, 12, 11], [4, 1, 3, 2])):
        first_entry_scores(layer.q, values)
        zero_kv(layer)
    return model


def test_local_sort_prunes_each_group_by_its_own_ranking():
    pruner = prune(two_scaled_layers())
    assert pruner.pruned_heads == {0: {1, 3}, 1: {1, 3}}


def test_global_sort_ranks_all_groups_together_and_keeps_one_head_per_group():
    pruner = prune(two_scaled_layers(), global_sort=True)
    # int(8 * 0.5) = 4 heads: 1, 2, 3 of layer 1 (its last head stays), then layer 0's weakest.
    assert pruner.pruned_heads == {0: {1}, 1: {1, 2, 3}}


def test_sparsity_per_group_from_config_list():
    model = two_scaled_layers()
    config = [{"sparsity": 0.25, "op_names": [f"layers.0.{p}" for p in "qkvo"]},
              {"sparsity": 0.75, "op_names": [f"layers.1.{p}" for p in "qkvo"]}]
    pruner = prune(model, config)
    assert pruner.pruned_heads == {0: {1}, 1: {1, 2, 3}}


def test_unselected_groups_and_modules_outside_groups_are_left_alone():
    model = make_tiny_transformer(layers=2)
    pruner = prune(model, [{"sparsity": 0.5, "op_names": [f"layers.1.{p}" for p in "qkvo"] + ["head"]}])
    assert [group.name for group in pruner.attention_groups] == ["layers.1"]
    assert list(pruner.wrappers) == [f"layers.1.{p}" for p in "qkvo"]
    assert isinstance(model.head, nn.Linear) and isinstance(model.layers[0].q, nn.Linear)


# -- activation criteria -----------------------------------------------------------------------------


def batches() -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(2, 3, 8), torch.randn(1, 5, 8)]


@pytest.mark.parametrize("criterion", ["l1_activation", "l2_activation"])
def test_activation_criteria_sum_the_head_outputs_over_the_forward_runner(criterion):
    model = make_tiny_transformer(layers=1)
    seen = []  # the head outputs: the input of o
    model.layers[0].o.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().reshape(-1, 4, 2)))

    def runner(m):
        assert not m.training
        for x in batches():
            m(x)

    pruner = prune(model, ranking_criterion=criterion, forward_runner=runner)
    assert model.training  # the mode is restored

    def expected(heads: torch.Tensor) -> torch.Tensor:
        return heads.abs().sum(dim=(0, 2)) if criterion == "l1_activation" else heads.norm(dim=2).sum(dim=0)

    before = sum(expected(h) for h in seen[:2])
    assert pruner.pruned_heads[0] == set(torch.argsort(before)[:2].tolist())
    seen.clear()
    assert torch.allclose(pruner.head_scores()[0], sum(expected(h) for h in seen), rtol=1e-5)
    assert all(score == 0 for h, score in enumerate(pruner.head_scores()[0].tolist()) if h in pruner.pruned_heads[0])


def test_taylor_statistics_equal_x_times_its_gradient_through_the_output_projection():
    torch.manual_seed(0)
    o = nn.Linear(4, 3)
    x = torch.randn(2, 5, 4, requires_grad=True)
    c = torch.randn(2, 5, 3)
    with HeadStatistics("taylorfo", [ObservedProjection(o, "linear", 2)]) as statistics:
        (o(x) * c).sum().backward()
    expected = (x * x.grad).detach().abs().reshape(10, 2, 2).sum(dim=(0, 2))
    assert torch.allclose(statistics.sums[0], expected, rtol=1e-5)


def test_taylor_statistics_of_a_hf_conv1d_output_projection():
    torch.manual_seed(0)
    o = Conv1D(3, 4)  # weight (in=4, out=3)
    x = torch.randn(2, 5, 4, requires_grad=True)
    with HeadStatistics("taylorfo", [ObservedProjection(o, "conv1d", 2)]) as statistics:
        o(x).pow(2).sum().backward()
    expected = (x * x.grad).detach().abs().reshape(10, 2, 2).sum(dim=(0, 2))
    assert torch.allclose(statistics.sums[0], expected, rtol=1e-5)


def test_taylorfo_calls_trainer_with_epoch_none_before_each_step_and_fine_tunes_between():
    model = make_tiny_transformer(layers=1, embed=4, heads=6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    calls = []

    def trainer(m, optimizer, criterion, epoch):
        calls.append(epoch)
        optimizer.zero_grad()
        criterion(m(torch.randn(4, 3, 4)), torch.tensor([0, 1, 2, 0])).backward()
        optimizer.step()

    pruner = prune(model, [{"sparsity": 0.5, "op_types": ["Linear"]}], ranking_criterion="taylorfo", num_iterations=2,
                   epochs_per_iteration=2, optimizer=optimizer, trainer=trainer, criterion=nn.CrossEntropyLoss())
    assert calls == [None, 1, 2, None]
    assert len(pruner.pruned_heads[0]) == 3


# -- iterative pruning ----------------------------------------------------------------------------------


def test_iterative_pruning_grows_to_the_sparsity_and_fine_tunes_between_iterations():
    model = make_tiny_transformer(layers=1, embed=4, heads=6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []

    def trainer(m, optimizer, criterion, epoch):
        pruner_heads = set(m.layers[0].q.weight_mask.reshape(6, -1).eq(0).all(dim=1).nonzero().flatten().tolist())
        seen.append((epoch, pruner_heads))
        optimizer.zero_grad()
        m(torch.randn(2, 3, 4)).pow(2).sum().backward()
        optimizer.step()

    pruner = prune(model, [{"sparsity": 0.5, "op_types": ["Linear"]}], num_iterations=3, epochs_per_iteration=2,
                   optimizer=optimizer, trainer=trainer)
    assert [epoch for epoch, _ in seen] == [1, 2, 1, 2]
    # int(6 * 0.5 * i / 3) heads after iteration i: 1, 2, then 3; pruned heads stay pruned.
    assert [len(heads) for _, heads in seen] == [1, 1, 2, 2]
    assert seen[0][1] <= seen[2][1] <= pruner.pruned_heads[0] and len(pruner.pruned_heads[0]) == 3
    weight = model.layers[0].q.module.weight.reshape(6, -1)
    assert all(bool(weight[h].eq(0).all()) for h in pruner.pruned_heads[0])  # zero through the optimizer steps


# -- grouped-query attention ----------------------------------------------------------------------------


def gqa_model() -> TinyTransformer:
    """4 query heads reading 2 key/value heads; L1 scores 0.5, 9 | 3, 4 (group sums 9.5 and 7)."""
    model = make_tiny_transformer(layers=1, embed=4, heads=4, kv_heads=2, head_dim=2)
    first_entry_scores(model.layers[0].q, [1.5, 27, 9, 12])
    zero_kv(model.layers[0])
    return model


def assert_gqa_consistent(masks: dict, heads: int, kv_heads: int) -> None:
    pruned_q = set(head_rows_zero(masks["layers.0.q"]["weight"], 2))
    pruned_o = set(head_rows_zero(masks["layers.0.o"]["weight"], 2, axis=1))
    assert pruned_q == pruned_o
    size = heads // kv_heads
    for j in head_rows_zero(masks["layers.0.k"]["weight"], 2):
        assert set(range(j * size, (j + 1) * size)) <= pruned_q  # no query head reads a pruned KV head
    assert head_rows_zero(masks["layers.0.k"]["weight"], 2) == head_rows_zero(masks["layers.0.v"]["weight"], 2)


def test_gqa_prunes_whole_kv_groups_by_default_ranked_by_their_summed_importance():
    pruner = prune(gqa_model())
    assert pruner.pruned_heads == {0: {2, 3}}  # group 1 (3 + 4) < group 0 (0.5 + 9), though head 0 is weakest
    masks = pruner.masks()
    assert head_rows_zero(masks["layers.0.k"]["weight"], 2) == [1]
    assert_gqa_consistent(masks, 4, 2)


def test_gqa_query_heads_only_prunes_as_many_in_every_kv_group_and_keeps_k_and_v():
    pruner = prune(gqa_model(), gqa_pruning="query_heads")
    assert pruner.pruned_heads == {0: {0, 2}}
    masks = pruner.masks()
    assert masks["layers.0.k"]["weight"].eq(1).all() and masks["layers.0.v"]["bias"].eq(1).all()
    assert_gqa_consistent(masks, 4, 2)


def test_gqa_query_heads_only_with_global_sort_and_iterations():
    model = make_tiny_transformer(layers=2, embed=4, heads=8, kv_heads=2, head_dim=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def trainer(m, optimizer, criterion, epoch):
        optimizer.zero_grad()
        m(torch.randn(2, 3, 4)).sum().backward()
        optimizer.step()

    pruner = prune(model, [{"sparsity": 0.5, "op_types": ["Linear"]}], gqa_pruning="query_heads", global_sort=True,
                   num_iterations=2, optimizer=optimizer, trainer=trainer)
    # units: one query head of each KV group; int(2 groups * 4 units * 0.5) = 4 units = 8 query heads
    assert sum(map(len, pruner.pruned_heads.values())) == 8
    for index, heads in pruner.pruned_heads.items():
        assert len(heads & {0, 1, 2, 3}) == len(heads & {4, 5, 6, 7})
    assert all(mask.eq(1).all() for name, entry in pruner.masks().items() if name.endswith((".k", ".v"))
               for mask in entry.values())


# -- nn.MultiheadAttention ------------------------------------------------------------------------------


class MHANet(nn.Module):
    def __init__(self, batch_first: bool = True, **kwargs) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 4, batch_first=batch_first, **kwargs)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.attn(x, x, x, need_weights=False)[0])


MHA_GROUPS = [["attn", "attn", "attn", "attn.out_proj"]]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("options", [{}, {"kdim": 6, "vdim": 5}, {"add_bias_kv": True}, {"bias": False}])
def test_mha_head_outputs_are_the_input_of_out_proj(batch_first, options):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 4, batch_first=batch_first, **options).eval()
    query = torch.randn(2, 3, 8) if batch_first else torch.randn(3, 2, 8)
    key = torch.randn(query.shape[0], query.shape[1] + 1, options.get("kdim", 8)) if batch_first else \
        torch.randn(query.shape[0] + 1, query.shape[1], options.get("kdim", 8))
    value = torch.randn(*key.shape[:2], options.get("vdim", 8))
    padding = torch.tensor([[False, False, False, True], [False, True, False, False]])
    arguments = dict(key_padding_mask=padding, need_weights=False)
    expected = mha(query, key, value, **arguments)[0]
    heads = mha_head_outputs(mha, (query, key, value), arguments)
    assert torch.allclose(mha.out_proj(heads), expected, atol=1e-6)


def test_mha_masks_in_proj_rows_and_out_proj_columns():
    torch.manual_seed(0)
    model = MHANet()
    with torch.no_grad():  # head h's q, k and v rows scaled by h + 1: heads 0 and 1 are the weakest
        model.attn.in_proj_weight.copy_(torch.ones(24, 8) * torch.arange(1.0, 5.0).repeat_interleave(2).repeat(3).view(24, 1))
    pruner = prune(model, head_hidden_dim=2, groups=MHA_GROUPS)
    masks = pruner.masks()
    assert set(masks) == {"attn", "attn.out_proj"}
    assert set(masks["attn"]) == {"in_proj_weight", "in_proj_bias"}
    assert set(masks["attn.out_proj"]) == {"weight", "bias"}
    rows = torch.tensor([0.0, 0, 0, 0, 1, 1, 1, 1]).repeat(3)
    assert torch.equal(masks["attn"]["in_proj_weight"], rows.view(24, 1).expand(24, 8))
    assert torch.equal(masks["attn"]["in_proj_bias"], rows)
    assert torch.equal(masks["attn.out_proj"]["weight"], rows[:8].view(1, 8).expand(8, 8))
    assert torch.equal(masks["attn.out_proj"]["bias"], torch.ones(8))
    assert model.attn.in_proj_weight[:4].eq(0).all() and model.attn.out_proj.weight[:, :4].eq(0).all()


def test_mha_masks_with_separate_projection_weights_and_bias_kv():
    torch.manual_seed(0)
    model = MHANet(kdim=6, vdim=5, add_bias_kv=True)
    pruner = prune(model, [{"sparsity": 0.25, "op_types": ["default"]}], head_hidden_dim=2, groups=MHA_GROUPS)
    (head,) = pruner.pruned_heads[0]
    masks = pruner.masks()["attn"]
    assert set(masks) == {"q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias", "bias_k", "bias_v"}
    for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
        assert head_rows_zero(masks[name], 2) == [head]
    assert head_rows_zero(masks["in_proj_bias"].view(24, 1), 2) == [head, head + 4, head + 8]
    assert head_rows_zero(masks["bias_v"], 2, axis=2) == [head]


def test_mha_taylorfo_matches_autograd_through_out_proj():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 4, batch_first=True)
    x, c = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    heads = mha_head_outputs(mha, (x, x, x), {}).requires_grad_()
    (mha.out_proj(heads) * c).sum().backward()
    expected = (heads * heads.grad).detach().abs().reshape(6, 4, 2).sum(dim=(0, 2))
    with HeadStatistics("taylorfo", [ObservedProjection(mha, "mha", 4)]) as statistics:
        (mha(x, x, x)[0] * c).sum().backward()
    assert torch.allclose(statistics.sums[0], expected, rtol=1e-5)


def test_mha_pruned_heads_contribute_nothing():
    torch.manual_seed(0)
    model = MHANet().eval()
    original = copy.deepcopy(model)
    x = torch.randn(2, 5, 8)
    pruner = prune(model, head_hidden_dim=2, groups=MHA_GROUPS, ranking_criterion="l2_activation",
                   forward_runner=lambda m: m(x))
    keep = torch.ones(4, 2)
    keep[sorted(pruner.pruned_heads[0])] = 0
    heads = mha_head_outputs(original.attn, (x, x, x), {})
    with torch.no_grad():
        assert torch.allclose(model(x), original.fc(original.attn.out_proj(heads * keep.flatten())), atol=1e-6)


def test_a_wrapped_transformer_encoder_runs_in_eval_and_train_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 4, 16, dropout=0.0, batch_first=True), 2))
    x = torch.randn(2, 5, 8)
    groups = [[f"0.layers.{i}.self_attn"] * 3 + [f"0.layers.{i}.self_attn.out_proj"] for i in range(2)]
    pruner = TransformerHeadPruner(model, ALL, 2, groups, verbose=False)
    pruner.compress()
    model.eval()
    with torch.no_grad():
        wrapped_eval = model(x)
    model.train()
    wrapped_train = model(x)
    pruner.unwrap_model()
    model.eval()
    with torch.no_grad():
        unwrapped = model(x)
    assert torch.allclose(wrapped_eval, unwrapped, atol=1e-5)
    assert torch.allclose(wrapped_train, unwrapped, atol=1e-5)


def test_masks_with_parameter_names_are_exported_and_read_back(tmp_path):
    torch.manual_seed(0)
    model = MHANet()
    pruner = prune(model, head_hidden_dim=2, groups=MHA_GROUPS)
    pruner.export_model(str(tmp_path / "model.pth"), str(tmp_path / "mask.pth"))
    masks = load_masks(tmp_path / "mask.pth")
    assert torch.equal(masks["attn"]["in_proj_weight"], pruner.masks()["attn"]["in_proj_weight"])
    state = torch.load(tmp_path / "model.pth", weights_only=True)
    assert set(state) == set(MHANet().state_dict())
    assert torch.equal(state["attn.in_proj_weight"], model.attn.in_proj_weight)


# -- fused HF Conv1D (GPT-2's c_attn) -------------------------------------------------------------------


class FusedAttention(nn.Module):
    """GPT-2's layout: ``c_attn`` (Conv1D, weight ``(embed, 3 * embed)``) gives ``[q | k | v]``."""

    def __init__(self, embed: int = 8, heads: int = 4) -> None:
        super().__init__()
        self.embed, self.heads = embed, heads
        self.c_attn = Conv1D(3 * embed, embed)
        self.c_proj = Conv1D(embed, embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in self.c_attn(x).split(self.embed, 2))
        heads = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.c_proj(heads.transpose(1, 2).reshape(batch, length, self.embed))


def test_fused_conv1d_masks_columns_of_c_attn_and_rows_of_c_proj():
    torch.manual_seed(0)
    model = nn.Sequential(FusedAttention())
    pruner = TransformerHeadPruner(model, ALL, 2, [["0.c_attn"] * 3 + ["0.c_proj"]], verbose=False)
    pruner.compress()
    pruned = sorted(pruner.pruned_heads[0])
    masks = pruner.masks()
    columns = [part * 4 + h for part in range(3) for h in pruned]  # head slots of [q | k | v]
    assert head_rows_zero(masks["0.c_attn"]["weight"], 2, axis=1) == columns
    assert head_rows_zero(masks["0.c_attn"]["bias"].view(24, 1), 2) == columns
    assert head_rows_zero(masks["0.c_proj"]["weight"], 2) == pruned
    assert masks["0.c_proj"]["weight"].sum() == 8 * 4 and masks["0.c_attn"]["weight"].sum() == 8 * 12


def test_conv1d_weight_scores_equal_those_of_the_same_linear_projections():
    torch.manual_seed(0)
    fused = nn.Sequential(FusedAttention(embed=8, heads=4))
    linear = make_tiny_transformer(layers=1, embed=8, heads=4, head_dim=2)
    weight = fused[0].c_attn.weight.detach()
    with torch.no_grad():
        for index, name in enumerate("qkv"):
            getattr(linear.layers[0], name).weight.copy_(weight[:, index * 8:(index + 1) * 8].t())
    for criterion in ("l1_weight", "l2_weight"):
        a = TransformerHeadPruner(fused, ALL, 2, [["0.c_attn"] * 3 + ["0.c_proj"]], ranking_criterion=criterion,
                                  verbose=False)
        b = TransformerHeadPruner(linear, ALL, 2, tiny_groups(1), ranking_criterion=criterion, verbose=False)
        a._wrap_model()
        b._wrap_model()
        assert torch.allclose(a.head_scores()[0], b.head_scores()[0])
        a.unwrap_model()
        b.unwrap_model()


# -- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    ({"groups": [["layers.0.q", "layers.0.k", "layers.0.v"]]}, r"attention_name_groups\[0\]: a group names four modules \[q, k, v, o\], got 3 names"),
    ({"groups": "layers.0"}, r"must be a non-empty list of \[q, k, v, o\]"),
    ({"groups": [["layers.0.q", "layers.0.k", "layers.0.v", "layers.0.out"]]}, r"no module named 'layers.0.out'; did you mean 'layers.0.o'\?"),
    ({"head_hidden_dim": 3}, r"head_hidden_dim=3 does not divide the 8 output features of 'layers.0.q'"),
    ({"groups": [["layers.0.q", "layers.0.k", "layers.0.v", "layers.0.o"], ["layers.0.q", "layers.1.k", "layers.1.v", "layers.1.o"]]},
     r"attention_name_groups\[1\]: 'layers.0.q' is already in attention_name_groups\[0\]"),
    ({"groups": [["layers.0.q", "layers.0.q", "layers.0.v", "layers.0.o"]]}, r"must be three projections, or one fused projection named three times"),
    ({"groups": [["layers.0", "layers.0.k", "layers.0.v", "layers.0.o"]]}, r"'layers.0' is a TinyAttention, not a Linear"),
    ({"head_hidden_dim": 0}, r"head_hidden_dim must be an int >= 1, got 0"),
    ({"head_hidden_dim": True}, r"head_hidden_dim must be an int >= 1, got True"),
    ({"ranking_criterion": "l3_weight"}, r"ranking_criterion must be one of 'l1_weight', .*got 'l3_weight'"),
    ({"gqa_pruning": "kv"}, r"gqa_pruning must be one of 'kv_groups', 'query_heads', got 'kv'"),
    ({"ranking_criterion": "taylorfo"}, r"ranking_criterion='taylorfo' needs trainer\(model, optimizer, criterion, epoch\)"),
    ({"num_iterations": 2, "trainer": lambda *a, **k: None}, r"num_iterations=2 needs the optimizer that trainer uses"),
    ({"ranking_criterion": "l1_activation"}, r"ranking_criterion='l1_activation' needs forward_runner\(model\)"),
    ({"num_iterations": 0}, r"num_iterations must be an int >= 1, got 0"),
    ({"groups": None}, r"needs attention_name_groups .* or dummy_input"),
    ({"config_list": [{"sparsity": 0.5, "op_names": ["layers.0.q", "layers.0.k", "layers.0.v"]}]},
     r"selects 'layers.0.q', 'layers.0.k', 'layers.0.v' but not 'layers.0.o' of attention group 'layers.0'"),
    ({"config_list": [{"sparsity": 0.5, "op_types": ["Linear"]}, {"sparsity": 0.2, "op_names": ["layers.1.o"]}]},
     r"gives the modules of attention group 'layers.1' different sparsities \[0.2, 0.5\]"),
    ({"config_list": [{"sparsity": 0.5, "op_names": ["head"]}]}, r"selects no complete attention group"),
    ({"config_list": [{"sparsity": 1.0, "op_types": ["Linear"]}]}, r"config_list\[0\].sparsity: 1.0 is greater than or equal to the maximum of 1"),
    ({"config_list": [{"sparsity": 0.5, "op_names": [f"layers.0.{p}" for p in "qkvo"]},
                      {"sparsity": 0.25, "op_names": [f"layers.1.{p}" for p in "qkvo"]}], "global_sort": True},
     r"global_sort=True ranks all groups together, so give them one sparsity, got \[0.25, 0.5\]"),
])
def test_bad_input_is_a_config_error_and_leaves_the_model_untouched(change, message):
    model = make_tiny_transformer(layers=2)
    before = snapshot(model)
    arguments = {"config_list": ALL, "head_hidden_dim": 2, "groups": tiny_groups(2), **change}
    with pytest.raises(ConfigError, match=message):
        TransformerHeadPruner(model, arguments.pop("config_list"), arguments.pop("head_hidden_dim"),
                              arguments.pop("groups"), verbose=False, **arguments)
    assert_untouched(model, before)


@pytest.mark.parametrize("model, groups, head_dim, message", [
    (lambda: make_tiny_transformer(layers=1, embed=6), [["layers.0.q", "layers.0.k", "layers.0.v", "head"]], 2,
     r"output projection 'head' reads 6 features but query projection 'layers.0.q' gives 8"),
    (lambda: make_tiny_transformer(layers=1, heads=6, kv_heads=4), tiny_groups(1), 2,
     r"'layers.0.q' has 6 heads, not a multiple of the 4 key/value heads of 'layers.0.k'"),
    (lambda: MHANet(), MHA_GROUPS, 4, r"head_hidden_dim=4 does not match nn.MultiheadAttention 'attn' \(4 heads of 2 features\)"),
    (lambda: MHANet(), [["attn", "attn", "attn", "fc"]], 2, r"is named as q, k and v, with its out_proj 'attn.out_proj' as o"),
    (lambda: nn.Sequential(FusedAttention()), [["0.c_attn"] * 3 + ["0.c_proj"]], 3,
     r"head_hidden_dim=3 does not divide the 8 output features of '0.c_attn'"),
])
def test_bad_groups_of_other_layouts(model, groups, head_dim, message):
    model = model()
    before = snapshot(model)
    with pytest.raises(ConfigError, match=message):
        TransformerHeadPruner(model, ALL, head_dim, groups, verbose=False)
    assert_untouched(model, before)


def test_key_and_value_of_different_widths_are_refused():
    model = make_tiny_transformer(layers=1)
    model.layers[0].v = nn.Linear(8, 4)
    with pytest.raises(ConfigError, match=r"key projection 'layers.0.k' gives 8 features but value projection 'layers.0.v' gives 4"):
        TransformerHeadPruner(model, ALL, 2, tiny_groups(1), verbose=False)


def test_groups_found_from_dummy_input_prune_as_named_groups_do():
    named = prune(two_scaled_layers())
    found = TransformerHeadPruner(two_scaled_layers(), ALL, 2, dummy_input=torch.randn(1, 3, 2), verbose=False)
    assert [[g.q, g.k, g.v, g.o] for g in found.attention_groups] == tiny_groups(2)
    found.compress()
    assert found.pruned_heads == named.pruned_heads


def test_dummy_input_takes_every_multihead_attention_as_it_is():
    model = nn.Sequential(nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 4, 16, batch_first=True), 2)).eval()
    pruner = TransformerHeadPruner(model, ALL, 2, dummy_input=torch.randn(1, 3, 8), verbose=False)
    assert [[g.q, g.k, g.v, g.o] for g in pruner.attention_groups] == \
        [[f"0.layers.{i}.self_attn"] * 3 + [f"0.layers.{i}.self_attn.out_proj"] for i in range(2)]
    assert not model.training


@pytest.mark.parametrize("model, dummy, head_dim, message", [
    (lambda: make_tiny_transformer(), torch.randn(1, 3, 5), 2, r"dummy_input does not run through the model \(RuntimeError"),
    (lambda: make_tiny_transformer(), torch.randn(1, 3, 8), 4,
     r"head_hidden_dim=4 does not match attention 'layers.0' \(4 heads of 2 features, found from dummy_input\)"),
    (lambda: nn.Sequential(nn.Linear(8, 8)), torch.randn(1, 8), 2, r"found no attention in the model; pass attention_name_groups"),
])
def test_bad_dummy_input(model, dummy, head_dim, message):
    model = model()
    before = snapshot(model)
    with pytest.raises(ConfigError, match=message):
        TransformerHeadPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}], head_dim, dummy_input=dummy, verbose=False)
    assert_untouched(model, before)


def test_a_forward_runner_that_runs_nothing_is_an_error_and_the_model_is_unwrapped():
    model = make_tiny_transformer(layers=2)
    before = snapshot(model)
    pruner = TransformerHeadPruner(model, ALL, 2, tiny_groups(2), ranking_criterion="l1_activation",
                                   forward_runner=lambda m: None, verbose=False)
    with pytest.raises(ConfigError, match=r"forward_runner ran no batch through 'layers.0.o', 'layers.1.o'"):
        pruner.compress()
    assert_untouched(model, before)


def test_registry_name_and_export():
    import nncore.builtin_pruners as builtin

    assert get_compressor("transformer_head") is TransformerHeadPruner
    assert "TransformerHeadPruner" in builtin.__all__


def test_update_masks_keeps_pruned_heads_at_the_configured_sparsity_and_needs_compress_first():
    model = two_scaled_layers()
    pruner = TransformerHeadPruner(model, ALL, 2, tiny_groups(2), verbose=False)
    with pytest.raises(NncoreError, match="call compress\\(\\) first"):
        pruner.update_masks()
    pruner.compress()
    with torch.no_grad():  # a kept head becomes the weakest: the sparsity is reached, pruned heads stay
        model.layers[0].q.module.weight[0, 0] = 0.5
    pruner.update_masks()
    assert pruner.pruned_heads == {0: {1, 3}, 1: {1, 3}}
    with pytest.raises(NncoreError, match="takes no per-layer sparsities"):
        pruner.update_masks({"layers.0.q": 0.5})


def test_a_wrapped_multihead_attention_deep_copies_with_its_masks():
    torch.manual_seed(0)
    model = MHANet()
    prune(model, head_hidden_dim=2, groups=MHA_GROUPS)
    clone = copy.deepcopy(model)
    assert torch.equal(clone.attn.in_proj_weight_mask, model.attn.in_proj_weight_mask)
    assert clone.attn.num_heads == 4  # read through the wrapper
    optimizer = torch.optim.SGD(clone.parameters(), lr=1.0)
    clone(torch.randn(2, 3, 8)).sum().backward()
    optimizer.step()
    assert clone.attn.module.in_proj_weight[:8].reshape(4, -1).eq(0).all(dim=1).sum() == 2


def test_speedup_removes_multihead_attention_heads_from_the_pruners_masks():
    from nncore.speedup import ModelSpeedup

    torch.manual_seed(0)
    model = MHANet().eval()
    x = torch.randn(2, 5, 8)
    pruner = prune(model, head_hidden_dim=2, groups=MHA_GROUPS)
    masks = pruner.masks()
    pruner.unwrap_model()
    with torch.no_grad():
        masked = model(x)
    ModelSpeedup(model, x, masks).speedup_model()
    assert model.attn.num_heads == 2
    with torch.no_grad():
        assert torch.allclose(model(x), masked, atol=1e-5)
