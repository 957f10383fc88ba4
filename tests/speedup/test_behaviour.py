"""Conflicts, barriers, strict mode, fine-grained masks, safety, mask files, extension points."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.speedup.models import Conv1dNet, ResNetish, ShuffleNetish, ViTish
from nncore.errors import ArtifactError, ConfigError, SpeedupError
from nncore.speedup import (BatchNormRule, ChannelwiseRule, ModelSpeedup, apply_compression_results,
                            register_shrink_rule, unregister_shrink_rule)
from tests.speedup.speedup_helpers import assert_same_function, filter_masks, masked_copy, randomize_bn


def chain_masks(model, pruned=(0, 2, 5), bn_bias=True):
    """Prune filters of conv ``c1`` (8 filters) and the matching BatchNorm channels."""
    weight = torch.ones_like(model.c1.weight)
    weight[list(pruned)] = 0
    bn = torch.ones(8)
    bn[list(pruned)] = 0
    return {"c1": {"weight": weight, "bias": None},
            "b1": {"weight": bn, "bias": bn.clone() if bn_bias else torch.ones(8)}}


class NotATensor:
    """Anything but tensors in a mask file must not be unpickled."""


@torch.fx.wrap
def mystery(x):
    return x * 2.0


class Chain(nn.Module):
    def __init__(self, op: str = "relu") -> None:
        super().__init__()
        self.op = op
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        if self.op == "mystery":
            x = mystery(x)
        x = self.c2(x)
        return self.fc(x.mean((2, 3)))


def fresh_chain(op="relu"):
    torch.manual_seed(0)
    return randomize_bn(Chain(op))


DUMMY = torch.randn(2, 3, 6, 6)


def test_chain_exact_shapes_and_same_function():
    model = fresh_chain()
    masks = chain_masks(model)
    reference = masked_copy(model, masks)
    ModelSpeedup(model, DUMMY, masks).speedup_model()
    assert model.c1.weight.shape == (5, 3, 3, 3)
    assert model.b1.running_mean.shape == (5,)
    assert model.c2.weight.shape == (6, 5, 3, 3)
    assert_same_function(model, reference, (2, 3, 6, 6))


def test_unmasked_batchnorm_bias_keeps_the_constant_channel_before_a_padded_conv():
    model = fresh_chain()
    masks = chain_masks(model, bn_bias=False)  # channels 0, 2, 5 become b1.bias: -0.08, 0.45, -0.13
    reference = masked_copy(model, masks)
    speedup = ModelSpeedup(model, DUMMY, masks)
    with pytest.warns(UserWarning, match="kept pruned channels: channels that are constant, not zero"):
        speedup.speedup_model()
    assert model.c1.out_channels == 6  # relu makes channels 0 and 5 zero: they go; channel 2 stays
    (reason,) = speedup.summary.kept_by
    assert "Conv2d module 'c2'" in reason and "zero padding" in reason
    assert_same_function(model, reference, (2, 3, 6, 6))


def test_unknown_op_is_a_barrier_named_in_the_summary():
    model = fresh_chain("mystery")
    masks = chain_masks(model)
    reference = masked_copy(model, masks)
    speedup = ModelSpeedup(model, DUMMY, masks)
    with pytest.warns(UserWarning, match="mystery"):
        speedup.speedup_model()
    assert model.c1.out_channels == 8
    assert any("mystery" in reason for reason in speedup.summary.kept_by)
    assert_same_function(model, reference, (2, 3, 6, 6))


def test_strict_mode_raises_naming_the_op_and_leaves_the_model():
    model = fresh_chain("mystery")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(SpeedupError, match=r"function 'mystery' in '<model>'"):
        ModelSpeedup(model, DUMMY, chain_masks(model), strict=True).speedup_model()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fine_grained_masks_say_nothing_structural_and_stay_correct():
    model = fresh_chain()
    generator = torch.Generator().manual_seed(0)
    masks = {name: {"weight": (torch.rand(m.weight.shape, generator=generator) > 0.5).float(), "bias": None}
             for name, m in (("c1", model.c1), ("c2", model.c2))}
    reference = masked_copy(model, masks)
    speedup = ModelSpeedup(model, DUMMY, masks)
    with pytest.warns(UserWarning, match="nothing can be removed structurally"):
        speedup.speedup_model()
    assert model.c1.weight.shape == (8, 3, 3, 3)
    assert_same_function(model, reference, (2, 3, 6, 6))


class BrokenRule(BatchNormRule):
    """Analyses a BatchNorm correctly but breaks while slicing it."""

    def shrink(self, module, kept):
        raise RuntimeError("boom")


class LyingRule(BatchNormRule):
    """Claims BatchNorm channel 1 (not pruned) is an exact zero."""

    def propagate(self, ctx, node, module, inputs, output):
        info = super().propagate(ctx, node, module, inputs, output)
        info.zero[1] = info.zero[1].copy()
        info.zero[1][1] = True
        return info


@pytest.mark.parametrize("rule, message", [(BrokenRule(), "boom"), (LyingRule(), "self-check failed")])
def test_any_failure_leaves_the_model_exactly_as_it_was(rule, message):
    model = fresh_chain()
    before = copy.deepcopy(model.state_dict())
    register_shrink_rule(nn.BatchNorm2d, rule)
    try:
        with pytest.raises(SpeedupError, match=message):
            ModelSpeedup(model, DUMMY, chain_masks(model), verify=True).speedup_model()
    finally:
        unregister_shrink_rule(nn.BatchNorm2d)
    assert model.c1.weight.shape == (8, 3, 3, 3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_mask_file_round_trip_and_bad_files(tmp_path):
    model = fresh_chain()
    masks = chain_masks(model)
    path = tmp_path / "mask.pth"
    torch.save(masks, path)
    reference = masked_copy(model, masks)
    apply_compression_results(model, path, dummy_input=DUMMY)
    assert model.c1.out_channels == 5
    assert_same_function(model, reference, (2, 3, 6, 6))

    not_masks = tmp_path / "list.pth"
    torch.save([torch.ones(2)], not_masks)
    with pytest.raises(ArtifactError, match="list.pth.*not a mask file"):
        ModelSpeedup(fresh_chain(), DUMMY, not_masks)
    code = tmp_path / "code.pth"
    torch.save({"c1": {"weight": NotATensor()}}, code)  # a pickled object: refused by weights_only
    with pytest.raises(ArtifactError, match="code.pth"):
        ModelSpeedup(fresh_chain(), DUMMY, code)


def test_masks_that_do_not_fit_the_model_are_rejected():
    model = fresh_chain()
    with pytest.raises(ArtifactError, match="'nope' names no module"):
        ModelSpeedup(model, DUMMY, {"nope": {"weight": torch.ones(1), "bias": None}})
    with pytest.raises(ArtifactError, match=r"'c1'.*shape \(2,\)"):
        ModelSpeedup(model, DUMMY, {"c1": {"weight": torch.ones(2), "bias": None}})


def test_apply_compression_results_without_input_applies_masks():
    model = fresh_chain()
    masks = chain_masks(model)
    with pytest.warns(UserWarning, match=r"pass dummy_input=<an example input> \(keyword\) to remove the pruned channels"):
        apply_compression_results(model, masks)
    assert model.c1.weight.shape == (8, 3, 3, 3)
    assert model.c1.weight[[0, 2, 5]].abs().sum() == 0


class GatedScale(nn.Module):
    """A per-channel scale whose forward fx cannot trace (data-dependent branch)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, channels))

    def forward(self, x):
        if x.sum() > 1e9:  # never taken; makes symbolic tracing fail
            return x
        return x * self.gamma.view(1, -1, 1, 1)


class ScaledChain(Chain):
    def __init__(self) -> None:
        super().__init__()
        self.scale = GatedScale(8)

    def forward(self, x):
        x = self.scale(F.relu(self.b1(self.c1(x))))
        return self.fc(self.c2(x).mean((2, 3)))


def test_untraceable_module_is_recorded_and_shrinks_without_a_rule():
    torch.manual_seed(0)
    model = randomize_bn(ScaledChain())
    masks = chain_masks(model)
    reference = masked_copy(model, masks)
    recorded = copy.deepcopy(model)
    speedup = ModelSpeedup(recorded, DUMMY, masks)
    speedup.speedup_model()
    assert any("recording one forward pass" in note for note in speedup.summary.notes)
    assert recorded.c1.out_channels == 5
    assert recorded.scale.gamma.shape == (5,)  # the parameter the recorded forward multiplies in
    assert_same_function(recorded, reference, (2, 3, 6, 6))


def test_a_registered_rule_takes_the_module_as_a_unit():
    torch.manual_seed(0)
    model = randomize_bn(ScaledChain())
    masks = chain_masks(model)
    reference = masked_copy(model, masks)
    register_shrink_rule(GatedScale, ChannelwiseRule(dim=1, params=("gamma",), keeps_zero=True))
    try:
        ModelSpeedup(model, DUMMY, masks).speedup_model()
    finally:
        unregister_shrink_rule(GatedScale)
    assert model.c1.out_channels == 5
    assert model.scale.gamma.shape == (5,)
    assert_same_function(model, reference, (2, 3, 6, 6))


def test_register_shrink_rule_checks_its_arguments():
    with pytest.raises(ConfigError, match="nn.Module subclass"):
        register_shrink_rule(int, ChannelwiseRule())
    with pytest.raises(ConfigError, match="must be a ShrinkRule"):
        register_shrink_rule(GatedScale, lambda module: None)


def test_plugin_ships_a_rule_through_the_hook():
    registry = pytest.importorskip("nncore.registry")
    from nncore.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def register_shrink_rules(self):
            return [(GatedScale, ChannelwiseRule(dim=1, params=("gamma",), keeps_zero=True))]

    torch.manual_seed(0)
    model = randomize_bn(ScaledChain())
    manager = registry.plugin_manager()
    plugin = Plugin()
    manager.register(plugin)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ModelSpeedup(model, DUMMY, chain_masks(model)).speedup_model()
    finally:
        manager.unregister(plugin)
    assert model.scale.gamma.shape == (5,)


def test_conflicting_masks_in_a_residual_group_keep_the_channel():
    torch.manual_seed(0)
    model = randomize_bn(ResNetish())
    dummy = torch.randn(2, 3, 8, 8)
    masks = filter_masks(model, dummy, 0.5, skip=("fc",))
    masks["layer1.0.conv2"]["weight"] = torch.ones_like(model.layer1[0].conv2.weight)  # disagrees
    masks["layer1.0.bn2"] = {"weight": torch.ones(8), "bias": torch.ones(8)}
    reference = masked_copy(model, masks)
    speedup = ModelSpeedup(model, dummy, masks)
    with pytest.warns(UserWarning, match="speedup kept pruned channels: coupled channels are not zero"):
        speedup.speedup_model()
    assert model.conv1.out_channels == 8
    assert model.layer1[1].conv2.out_channels == 8
    assert model.layer1[0].conv1.out_channels == 4  # inside the block: not coupled
    assert_same_function(model, reference, (2, 3, 8, 8))


def test_grouped_and_depthwise_conv1d_shapes():
    torch.manual_seed(0)
    model = randomize_bn(Conv1dNet())
    c1 = torch.ones_like(model.c1.weight)
    c1[[1, 6]] = 0  # one input channel of each of c2's two groups
    bias = torch.ones(8)
    bias[[1, 6]] = 0
    masks = {"c1": {"weight": c1, "bias": bias}, "b1": {"weight": bias.clone(), "bias": bias.clone()}}
    c2 = torch.ones_like(model.c2.weight)
    c2[[0, 3, 5]] = 0  # two filters in group 0, one in group 1: only one per group can go
    masks["c2"] = {"weight": c2, "bias": torch.ones(8) - (c2.sum((1, 2)) == 0).float()}
    masks["c3"] = {"weight": torch.ones_like(model.c3.weight), "bias": masks["c2"]["bias"].clone()}
    reference = masked_copy(model, masks)
    with pytest.warns(UserWarning, match="speedup kept pruned channels: grouped convolution 'c2' needs equal groups"):
        ModelSpeedup(model, torch.randn(2, 4, 10), masks).speedup_model()
    assert model.c1.out_channels == 6
    assert (model.c2.in_channels, model.c2.out_channels, model.c2.groups) == (6, 6, 2)
    assert model.c2.weight.shape == (6, 3, 3)
    assert (model.c3.in_channels, model.c3.out_channels, model.c3.groups) == (6, 6, 6)
    assert model.fc.in_features == 6
    assert_same_function(model, reference, (2, 4, 10))


def test_channel_shuffle_keeps_the_same_index_in_every_group():
    torch.manual_seed(0)
    model = randomize_bn(ShuffleNetish())
    dummy = torch.randn(2, 3, 8, 8)
    masks = filter_masks(model, dummy, 0.5, skip=("fc",))
    reference = masked_copy(model, masks)
    with pytest.warns(UserWarning, match="speedup kept pruned channels: masked filters coupled with channels that are read where they are neither zero nor a constant"):
        ModelSpeedup(model, dummy, masks).speedup_model()
    assert model.units[0].branch[0][0].out_channels == 4
    assert_same_function(model, reference, (2, 3, 8, 8))


def head_masks(builtin: bool, dim: int = 16, head_dim: int = 4) -> dict:
    if builtin:
        weight = torch.ones(dim, dim)
        weight[:, 1 * head_dim:2 * head_dim] = 0
        return {"blocks.0.attn.out_proj": {"weight": weight, "bias": None}}
    weight, bias = torch.ones(3 * dim, dim), torch.ones(3 * dim)
    for head in (1, 3):  # value rows of heads 1 and 3
        rows = slice(2 * dim + head * head_dim, 2 * dim + (head + 1) * head_dim)
        weight[rows] = 0
        bias[rows] = 0
    return {"blocks.0.attn.qkv": {"weight": weight, "bias": bias}}


def test_hand_written_attention_loses_whole_heads():
    torch.manual_seed(0)
    model = ViTish().eval()
    masks = head_masks(builtin=False)
    reference = masked_copy(model, masks)
    ModelSpeedup(model, torch.randn(2, 3, 8, 8), masks).speedup_model()
    assert model.blocks[0].attn.qkv.weight.shape == (24, 16)
    assert model.blocks[0].attn.proj.weight.shape == (16, 8)
    assert_same_function(model, reference, (2, 3, 8, 8))


def test_multihead_attention_loses_heads_out_proj_ignores():
    from nncore.speedup.mha import PrunedMultiheadAttention

    torch.manual_seed(0)
    model = ViTish(builtin=True).eval()
    masks = head_masks(builtin=True)
    reference = masked_copy(model, masks)
    ModelSpeedup(model, torch.randn(2, 3, 8, 8), masks).speedup_model()
    attention = model.blocks[0].attn
    assert isinstance(attention, PrunedMultiheadAttention)
    assert attention.num_heads == 3
    assert attention.q_proj.weight.shape == (12, 16)
    assert attention.out_proj.weight.shape == (16, 12)
    assert_same_function(model, reference, (2, 3, 8, 8))


def test_training_flags_are_restored():
    model = fresh_chain().train()
    model.b1.eval()
    ModelSpeedup(model, DUMMY, chain_masks(model)).speedup_model()
    assert model.training and model.c1.training and not model.b1.training


class ParamScaleChain(Chain):
    """A bare parameter used in the traced forward (a layer scale): sliced with the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_scale = nn.Parameter(torch.linspace(0.5, 1.5, 8))

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x))) * self.layer_scale.view(1, -1, 1, 1)
        return self.fc(self.c2(x).mean((2, 3)))


def test_bare_parameters_in_the_graph_are_sliced_too():
    torch.manual_seed(0)
    model = randomize_bn(ParamScaleChain())
    masks = chain_masks(model)
    reference = masked_copy(model, masks)
    speedup = ModelSpeedup(model, DUMMY, masks)
    speedup.speedup_model()
    assert model.layer_scale.shape == (5,)
    assert speedup.summary.shrunk["layer_scale"] == ((8,), (5,))
    assert_same_function(model, reference, (2, 3, 6, 6))


class SameConv(nn.Conv2d):
    """A TF-"same" convolution (pads in its forward, as in timm): handled as a convolution."""

    def forward(self, x):
        return F.conv2d(F.pad(x, (0, 1, 0, 1)), self.weight, self.bias, self.stride, 0)


class PaddedChain(Chain):
    def __init__(self) -> None:
        super().__init__()
        self.c2 = SameConv(8, 6, 2)

    def forward(self, x):
        x = F.pad(F.relu(self.b1(self.c1(x))), (1, 1, 1, 1))
        return self.fc(self.c2(x).mean((2, 3)))


def test_padding_and_conv_subclasses_keep_channels_flowing():
    torch.manual_seed(0)
    model = randomize_bn(PaddedChain())
    masks = chain_masks(model)
    reference = masked_copy(model, masks)
    ModelSpeedup(model, DUMMY, masks).speedup_model()
    assert model.c1.out_channels == 5
    assert model.c2.weight.shape == (6, 5, 2, 2)
    assert_same_function(model, reference, (2, 3, 6, 6))


def test_verify_measures_the_difference_to_the_masked_model():
    model = fresh_chain()
    speedup = ModelSpeedup(model, DUMMY, chain_masks(model), verify=True)
    speedup.speedup_model()
    assert model.c1.out_channels == 5
    assert speedup.summary.max_abs_diff is not None and speedup.summary.max_abs_diff < 1e-5
    assert "c1: (8, 3, 3, 3) -> (5, 3, 3, 3)" in str(speedup.summary)


class AuxNet(nn.Module):
    """An auxiliary head that runs only in training (GoogLeNet / Inception-v3 style)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.aux = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        aux = self.aux(x) if self.training else None
        out = self.fc(self.c2(x).mean((2, 3)))
        return (out, aux) if self.training else out


def test_training_only_branches_shrink_with_their_inputs_and_the_model_still_trains():
    torch.manual_seed(0)
    model = randomize_bn(AuxNet())
    masks = {"c1": {"weight": torch.ones(8, 3, 3, 3), "bias": torch.ones(8)},
             "b1": {"weight": torch.ones(8), "bias": torch.ones(8)}}
    for key, mask in (("c1", masks["c1"]), ("b1", masks["b1"])):
        mask["weight"][:3] = 0
        mask["bias"][:3] = 0
    reference = masked_copy(model, masks)
    ModelSpeedup(model, DUMMY, masks).speedup_model()
    assert model.c1.out_channels == 5
    assert model.aux[2].weight.shape == (3, 5)  # traced by the second, training-mode recording
    assert_same_function(model, reference, (2, 3, 6, 6))
    model.train()
    out, aux = model(torch.randn(4, 3, 6, 6))
    (out.sum() + aux.sum()).backward()
    assert model.aux[2].weight.grad.shape == (3, 5) and model.c1.weight.grad.shape == (5, 3, 3, 3)


def test_a_training_branch_that_fails_on_dummy_input_is_reported():
    torch.manual_seed(0)
    model = randomize_bn(AuxNet())
    model.aux[0] = nn.AvgPool2d(8)  # needs inputs of at least 8x8; DUMMY is 6x6
    masks = {"c2": {"weight": torch.ones(8, 8, 3, 3), "bias": torch.ones(8)}}
    masks["c2"]["weight"][:2] = 0
    masks["c2"]["bias"][:2] = 0
    reference = masked_copy(model, masks)
    speedup = ModelSpeedup(model, DUMMY, masks)
    with pytest.warns(UserWarning, match=r"modules aux never ran on dummy_input \(in training mode the model failed"):
        speedup.speedup_model()
    assert model.c2.out_channels == 6
    assert_same_function(model, reference, (2, 3, 6, 6))
