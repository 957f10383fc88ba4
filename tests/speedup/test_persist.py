"""save_pruned / load_pruned: a sped-up model comes back from a fresh build, without pickled code."""
from __future__ import annotations

import copy

import pytest
import torch

from nncore.errors import ArtifactError
from nncore.speedup import ModelSpeedup, find_attention_groups, load_pruned, save_pruned
from tests.speedup.hf_models import bert, mask_heads, mask_hidden, mask_outputs, run, token_ids
from tests.speedup.models import VGGish, ViTish
from tests.speedup.speedup_helpers import filter_masks, randomize_bn

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _round_trip(build, model, dummy, masks, path):
    ModelSpeedup(model, dummy, masks).speedup_model()
    save_pruned(model, path)
    torch.manual_seed(123)  # the fresh model's own random weights must not matter
    fresh = load_pruned(build(), path)
    return fresh


def test_vgg_with_a_rewritten_literal_view_comes_back(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(VGGish())
    dummy = torch.randn(2, 3, 8, 8)
    masks = filter_masks(model, dummy, 0.5, skip=("classifier.3",))
    fresh = _round_trip(VGGish, model, dummy, masks, tmp_path / "vgg.pt")
    assert fresh.classifier[0].weight.shape == model.classifier[0].weight.shape == (12, 32)
    x = torch.randn(3, 3, 8, 8)
    assert torch.equal(fresh.eval()(x), model.eval()(x))


def test_multihead_attention_replacement_comes_back(tmp_path):
    torch.manual_seed(0)
    model = ViTish(builtin=True).eval()
    dummy = torch.randn(2, 3, 8, 8)
    masks = {"blocks.0.attn.out_proj": {"weight": torch.ones(16, 16), "bias": None}}
    masks["blocks.0.attn.out_proj"]["weight"][:, 4:8] = 0  # head 1 of 4
    fresh = _round_trip(lambda: ViTish(builtin=True), model, dummy, masks, tmp_path / "vit.pt")
    assert type(fresh.blocks[0].attn).__name__ == "PrunedMultiheadAttention"
    assert fresh.blocks[0].attn.num_heads == 3
    x = torch.randn(3, 3, 8, 8)
    assert torch.allclose(fresh.eval()(x), model.eval()(x), atol=1e-6)


def test_per_layer_heads_and_hidden_size_of_a_hugging_face_model(tmp_path):
    model, inputs = bert(), token_ids()
    group = find_attention_groups(model, inputs)[1]
    masks = mask_hidden(model, [2, 7])
    mask_heads(masks, model, group, heads=[0])  # layer 1 only: no config can express 4 and 3 heads
    mask_outputs(masks, model, "encoder.layer.0.intermediate.dense", slice(0, 10))
    fresh = _round_trip(bert, model, inputs, masks, tmp_path / "bert.pt")
    layer = fresh.encoder.layer
    assert (layer[0].attention.self.num_attention_heads, layer[1].attention.self.num_attention_heads) == (4, 3)
    assert layer[0].intermediate.dense.weight.shape == (38, 30)
    assert torch.equal(run(fresh, token_ids(5)), run(model, token_ids(5)))
    again = tmp_path / "again.pt"
    save_pruned(fresh, again)  # a loaded model can be saved again
    assert torch.equal(run(load_pruned(bert(), again), inputs), run(model, inputs))


def test_the_file_loads_with_weights_only(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(VGGish())
    dummy = torch.randn(2, 3, 8, 8)
    ModelSpeedup(model, dummy, filter_masks(model, dummy, 0.5, skip=("classifier.3",))).speedup_model()
    save_pruned(model, tmp_path / "m.pt")
    content = torch.load(tmp_path / "m.pt", weights_only=True)
    assert content["format"] == "nncore.pruned" and "classifier.0.weight" in content["state_dict"]


def test_bad_uses_say_what_is_wrong(tmp_path):
    with pytest.raises(ArtifactError, match="was not sped up by nncore"):
        save_pruned(VGGish(), tmp_path / "x.pt")
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ArtifactError, match="not a file written by nncore.speedup.save_pruned"):
        load_pruned(VGGish(), tmp_path / "other.pt")
    torch.manual_seed(0)
    model = randomize_bn(VGGish())
    dummy = torch.randn(2, 3, 8, 8)
    ModelSpeedup(model, dummy, filter_masks(model, dummy, 0.5, skip=("classifier.3",))).speedup_model()
    save_pruned(model, tmp_path / "vgg.pt")
    wrong = ViTish()
    before = copy.deepcopy(wrong.state_dict())
    with pytest.raises(ArtifactError, match="does not fit ViTish"):
        load_pruned(wrong, tmp_path / "vgg.pt")
    assert all(torch.equal(before[k], v) for k, v in wrong.state_dict().items())
