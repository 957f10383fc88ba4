"""TransformerHeadPruner on Hugging Face models built from tiny configs (random weights, no download).

The masked model must compute what the original computes with the pruned heads' outputs removed
(their features of the output projection's input set to zero).
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import pytest
import torch
import torch.nn as nn

from nncore.builtin_pruners import TransformerHeadPruner

transformers = pytest.importorskip("transformers")

IDS = torch.tensor([[5, 17, 42, 3, 99, 8], [1, 2, 3, 4, 5, 6]])


def bert() -> nn.Module:
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                     vocab_size=100)
    return transformers.BertModel(config)


def gpt2() -> nn.Module:
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2Model(config)


def llama() -> nn.Module:
    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=64, vocab_size=100)
    return transformers.LlamaModel(config)


def vit() -> nn.Module:
    config = transformers.ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=64, num_labels=10)
    return transformers.ViTForImageClassification(config)


def hidden(model: nn.Module) -> torch.Tensor:
    return model(IDS).last_hidden_state


CASES = {
    "bert": (bert, [[f"encoder.layer.{i}.attention.self.{p}" for p in ("query", "key", "value")]
                    + [f"encoder.layer.{i}.attention.output.dense"] for i in range(2)], hidden),
    "gpt2": (gpt2, [[f"h.{i}.attn.c_attn"] * 3 + [f"h.{i}.attn.c_proj"] for i in range(2)], hidden),
    "llama": (llama, [[f"layers.{i}.self_attn.{p}_proj" for p in "qkvo"] for i in range(2)], hidden),
    "vit": (vit, [[f"vit.layers.{i}.attention.{p}_proj" for p in "qkvo"] for i in range(2)],
            lambda model: model(torch.linspace(0, 1, 128).view(2, 1, 8, 8)).logits),
}


def removing_heads(model: nn.Module, pruner: TransformerHeadPruner) -> list[Any]:
    """Forward pre-hooks on ``model``'s output projections that zero the pruned heads' features."""
    handles = []
    for group, pruned in zip(pruner.attention_groups, pruner.pruned_heads.values()):
        keep = torch.ones(group.num_heads, group.head_dim)
        keep[sorted(pruned)] = 0
        output = model.get_submodule(group.o)
        handles.append(output.register_forward_pre_hook(lambda m, args, keep=keep.flatten(): (args[0] * keep,)))
    return handles


@pytest.mark.parametrize("case, options, pruned_per_layer", [
    ("bert", {}, 2),
    ("gpt2", {}, 2),
    ("llama", {}, 2),
    ("llama", {"gqa_pruning": "query_heads"}, 2),
    ("vit", {}, 2),
    ("bert", {"ranking_criterion": "l2_activation"}, 2),
])
def test_the_masked_model_computes_the_original_without_the_pruned_heads(case, options, pruned_per_layer):
    build, groups, run = CASES[case]
    torch.manual_seed(0)
    model = build().eval()
    original = copy.deepcopy(model)
    if options.get("ranking_criterion") == "l2_activation":
        options = {**options, "forward_runner": run}
    pruner = TransformerHeadPruner(model, [{"sparsity": 0.5, "op_types": ["default"]}], 8, groups, verbose=False,
                                   **options)
    pruner.compress()
    assert [len(heads) for heads in pruner.pruned_heads.values()] == [pruned_per_layer] * 2
    with torch.no_grad():
        dense = run(original)
        removing_heads(original, pruner)
        masked, reference = run(model), run(original)
    assert not torch.allclose(masked, dense, atol=1e-3)
    assert torch.allclose(masked, reference, atol=1e-5)


def test_llama_kv_groups_mask_whole_key_value_heads():
    torch.manual_seed(0)
    model = llama()
    pruner = TransformerHeadPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}], 8,
                                   CASES["llama"][1], verbose=False)
    pruner.compress()
    masks = pruner.masks()
    for index, pruned in pruner.pruned_heads.items():
        (kv_head,) = {head // 2 for head in pruned}
        assert pruned == {2 * kv_head, 2 * kv_head + 1}
        k_rows = masks[f"layers.{index}.self_attn.k_proj"]["weight"][:, 0].view(2, 8)
        assert k_rows[kv_head].eq(0).all() and k_rows[1 - kv_head].eq(1).all()


def test_gpt2_groups_of_a_language_model_head_model_and_taylorfo():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    calls: list[Any] = []

    def trainer(m: nn.Module, optimizer: Any, criterion: Callable, epoch: Any) -> None:
        calls.append(epoch)
        optimizer.zero_grad()
        m(IDS, labels=IDS).loss.backward()
        optimizer.step()

    groups = [[f"transformer.h.{i}.attn.c_attn"] * 3 + [f"transformer.h.{i}.attn.c_proj"] for i in range(2)]
    pruner = TransformerHeadPruner(model, [{"sparsity": 0.25, "op_types": ["Conv1D"]}], 8, groups,
                                   ranking_criterion="taylorfo", optimizer=optimizer, trainer=trainer, verbose=False)
    pruner.compress()
    assert calls == [None]
    assert [len(heads) for heads in pruner.pruned_heads.values()] == [1, 1]
    weight = model.transformer.h[0].attn.c_attn.module.weight
    (head,) = pruner.pruned_heads[0]
    assert all(bool(weight[:, part * 32 + head * 8:part * 32 + (head + 1) * 8].eq(0).all()) for part in range(3))


@pytest.mark.parametrize("case", list(CASES))
def test_groups_found_from_dummy_input_are_the_named_groups(case):
    build, groups, _ = CASES[case]
    torch.manual_seed(0)
    model = build()
    dummy = torch.zeros(1, 1, 8, 8) if case == "vit" else IDS[:1]
    pruner = TransformerHeadPruner(model, [{"sparsity": 0.5, "op_types": ["default"]}], 8, dummy_input=dummy,
                                   verbose=False)
    assert [[g.q, g.k, g.v, g.o] for g in pruner.attention_groups] == groups
    assert [(g.num_heads, g.num_kv_heads, g.fused) for g in pruner.attention_groups] == \
        [(4, 2 if case == "llama" else 4, case == "gpt2")] * 2


@pytest.mark.parametrize("case, options", [("bert", {}), ("gpt2", {}), ("llama", {}),
                                           ("llama", {"gqa_pruning": "query_heads"}), ("vit", {})])
def test_speedup_removes_the_pruned_heads(case, options):
    from nncore.speedup import ModelSpeedup

    build, groups, run = CASES[case]
    torch.manual_seed(0)
    model = build().eval()
    pruner = TransformerHeadPruner(model, [{"sparsity": 0.5, "op_types": ["default"]}], 8, groups, verbose=False,
                                   **options)
    pruner.compress()
    masks = pruner.masks()
    pruner.unwrap_model()
    with torch.no_grad():
        masked = run(model)
    before = sum(p.numel() for p in model.parameters())
    dummy = torch.zeros(1, 1, 8, 8) if case == "vit" else IDS
    ModelSpeedup(model, dummy, masks).speedup_model()
    removed = before - sum(p.numel() for p in model.parameters())
    # per layer 2 of 4 query heads (8 features each, hidden 32): their rows of Q (+bias) and columns of O,
    # and the rows of K and V (+bias) of the key/value heads that go (none when only query heads go)
    bias = case != "llama"
    kv_heads_removed = 0 if options else (1 if case == "llama" else 2)
    assert removed == 2 * (2 * 8 * (32 + bias) + 2 * 8 * 32 + 2 * kv_heads_removed * 8 * (32 + bias))
    with torch.no_grad():
        assert torch.allclose(run(model), masked, atol=1e-5)
