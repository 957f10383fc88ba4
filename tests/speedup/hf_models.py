"""Tiny Hugging Face transformers built from configs (random weights, nothing downloaded), and mask
builders that prune attention heads, FFN neurons and hidden channels by hand."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

HIDDEN, HEADS, HEAD_DIM, FFN, VOCAB, LENGTH = 32, 4, 8, 48, 50, 6


def _quiet(config):
    config._attn_implementation = "sdpa"
    return config


def bert():
    config = transformers.BertConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS,
                                     intermediate_size=FFN, vocab_size=VOCAB, max_position_embeddings=16)
    return transformers.BertModel(_quiet(config)).eval()


def gpt2():
    config = transformers.GPT2Config(n_embd=HIDDEN, n_layer=2, n_head=HEADS, n_positions=16, vocab_size=VOCAB,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(_quiet(config)).eval()


def llama():
    config = transformers.LlamaConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS,
                                      num_key_value_heads=2, intermediate_size=FFN, vocab_size=VOCAB,
                                      max_position_embeddings=16, head_dim=HEAD_DIM, bos_token_id=0,
                                      eos_token_id=0, pad_token_id=0)
    return transformers.LlamaForCausalLM(_quiet(config)).eval()


def vit():
    config = transformers.ViTConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS,
                                    intermediate_size=FFN, image_size=8, patch_size=4, num_channels=1)
    return transformers.ViTModel(_quiet(config)).eval()


def token_ids(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1, VOCAB, (2, LENGTH), generator=generator)}


def pixels(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def run(model: nn.Module, inputs) -> torch.Tensor:
    """The model's main output tensor (logits or last hidden state)."""
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return out[0] if not isinstance(out, torch.Tensor) else out


def _entry(masks: dict, model: nn.Module, name: str) -> dict:
    if name not in masks:
        module = model.get_submodule(name)
        masks[name] = {"weight": torch.ones_like(module.weight),
                       "bias": None if getattr(module, "bias", None) is None else torch.ones_like(module.bias)}
    return masks[name]


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"


def mask_outputs(masks: dict, model: nn.Module, name: str, index) -> None:
    """Zero output features ``index`` of a Linear or HF Conv1D (weight rows or columns, and bias)."""
    entry = _entry(masks, model, name)
    if _is_conv1d(model.get_submodule(name)):
        entry["weight"][:, index] = 0
    else:
        entry["weight"][index] = 0
    if entry["bias"] is not None:
        entry["bias"][index] = 0


def mask_inputs(masks: dict, model: nn.Module, name: str, index) -> None:
    """Zero input features ``index`` of a Linear or HF Conv1D."""
    entry = _entry(masks, model, name)
    if _is_conv1d(model.get_submodule(name)):
        entry["weight"][index] = 0
    else:
        entry["weight"][:, index] = 0


def head_features(head: int, head_dim: int = HEAD_DIM) -> slice:
    return slice(head * head_dim, (head + 1) * head_dim)


def mask_heads(masks: dict, model: nn.Module, group, heads, kv_heads=()) -> None:
    """Mask query heads ``heads`` (their rows of q and columns of o) and key/value heads ``kv_heads``."""
    width = group.num_heads * group.head_dim
    for head in heads:
        mask_inputs(masks, model, group.o, head_features(head, group.head_dim))
        if group.fused:
            for start in (0, width, 2 * width):
                part = head_features(head, group.head_dim)
                mask_outputs(masks, model, group.q, slice(start + part.start, start + part.stop))
        else:
            mask_outputs(masks, model, group.q, head_features(head, group.head_dim))
    for head in kv_heads:
        for name in (group.k, group.v):
            mask_outputs(masks, model, name, head_features(head, group.head_dim))


def norm_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")]


def mask_hidden(model: nn.Module, removed) -> dict:
    """Masks on every norm's weight (and bias) that remove hidden channels ``removed``."""
    masks = {}
    for name in norm_names(model):
        module = model.get_submodule(name)
        keep = torch.ones_like(module.weight)
        keep[removed] = 0
        masks[name] = {"weight": keep, "bias": None if getattr(module, "bias", None) is None else keep.clone()}
    return masks


class KeptNorm(nn.Module):
    """A norm computed over the kept channels only, zero on the others: the reference for a
    model built at the smaller hidden size, run inside the full-size one."""

    def __init__(self, norm: nn.Module, keep: torch.Tensor) -> None:
        super().__init__()
        self.keep = keep
        self.inner = copy.deepcopy(norm)
        self.inner.weight = nn.Parameter(norm.weight.detach()[keep])
        if getattr(norm, "bias", None) is not None:
            self.inner.bias = nn.Parameter(norm.bias.detach()[keep])
        if hasattr(norm, "normalized_shape"):
            self.inner.normalized_shape = (len(keep),)

    def forward(self, x):
        out = torch.zeros_like(x)
        out[..., self.keep] = self.inner(x[..., self.keep])
        return out


def smaller_hidden_reference(model: nn.Module, removed) -> nn.Module:
    """A copy of ``model`` that computes what the model built at the smaller hidden size computes."""
    reference = copy.deepcopy(model)
    keep = torch.tensor([i for i in range(HIDDEN) if i not in set(removed)])
    for name in norm_names(model):
        parent, _, attr = name.rpartition(".")
        setattr(reference.get_submodule(parent) if parent else reference, attr,
                KeptNorm(model.get_submodule(name), keep))
    return reference
