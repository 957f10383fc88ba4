"""The dry run: linear products skipped, shapes checked as torch does, value reads refused."""
import copy
import re

import pytest
import torch

from nncore.speedup import ModelSpeedup
from nncore.speedup.analysis import Analysis
from nncore.speedup.dryrun import DryRun, ValueDependent, check_shapes


def _dry(fn, *args):
    with torch.no_grad(), DryRun() as mode:
        return fn(*args), mode


def test_a_linear_layer_returns_zeros_of_its_output_shape_without_computing():
    layer = torch.nn.Linear(4, 3)
    out, mode = _dry(layer, torch.randn(2, 5, 4))
    assert out.shape == (2, 5, 3) and out.dtype == torch.float32
    assert not out.any()
    assert mode.skipped == 1


def test_addmm_as_in_hugging_face_conv1d_is_skipped():
    bias, x, weight = torch.randn(3), torch.randn(6, 4), torch.randn(4, 3)
    out, mode = _dry(torch.addmm, bias, x, weight)
    assert out.shape == (6, 3) and mode.skipped == 1


@pytest.mark.parametrize("fn, shapes", [
    (torch.matmul, [(2, 3, 4, 5), (3, 5, 6)]),  # batch dimensions broadcast
    (lambda a, b: a @ b, [(7, 4, 5), (5, 2)]),
    (torch.Tensor.matmul, [(4, 5), (5, 6)]),
    (torch.bmm, [(2, 4, 5), (2, 5, 3)]),
])
def test_matrix_products_are_skipped_with_the_shape_torch_gives(fn, shapes):
    operands = [torch.randn(shape) for shape in shapes]
    out, mode = _dry(fn, *operands)
    assert out.shape == fn(*operands).shape and mode.skipped == 1


def test_a_product_with_a_vector_is_left_to_torch():
    a, v = torch.randn(3, 4), torch.randn(4)
    out, mode = _dry(torch.matmul, a, v)
    assert torch.equal(out, a @ v) and mode.skipped == 0


@pytest.mark.parametrize("x_shape, w_shape, options", [
    ((2, 3, 17, 19), (8, 3, 3, 3), {"stride": 2, "padding": 1}),
    ((2, 4, 17, 19), (8, 2, 3, 5), {"stride": (1, 2), "padding": (2, 0), "dilation": (2, 1), "groups": 2}),
    ((1, 3, 9), (6, 3, 5), {"padding": "same", "dilation": 2}),
    ((1, 3, 9, 9, 9), (6, 1, 3, 3, 3), {"groups": 3, "padding": "valid"}),
])
def test_a_convolution_is_skipped_with_the_shape_torch_gives(x_shape, w_shape, options):
    conv = {3: torch.nn.functional.conv1d, 4: torch.nn.functional.conv2d, 5: torch.nn.functional.conv3d}[len(w_shape)]
    x, weight, bias = torch.randn(x_shape), torch.randn(w_shape), torch.randn(w_shape[0])
    out, mode = _dry(lambda *a: conv(*a, **options), x, weight, bias)
    assert out.shape == conv(x, weight, bias, **options).shape and mode.skipped == 1


@pytest.mark.parametrize("gqa", [False, True])
def test_attention_is_skipped_with_the_shape_torch_gives(gqa):
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2 if gqa else 4, 7, 8), torch.randn(2, 2 if gqa else 4, 7, 3)
    mask = torch.ones(5, 7, dtype=torch.bool)
    attention = torch.nn.functional.scaled_dot_product_attention
    out, mode = _dry(lambda *a: attention(*a, attn_mask=mask, enable_gqa=gqa), q, k, v)
    assert out.shape == attention(q, k, v, attn_mask=mask, enable_gqa=gqa).shape == (2, 4, 5, 3)
    assert mode.skipped == 1


@pytest.mark.parametrize("fn, args", [
    (torch.matmul, (torch.randn(2, 3, 4), torch.randn(3, 5, 6))),
    (torch.bmm, (torch.randn(2, 3, 4), torch.randn(3, 4, 5))),
    (torch.nn.functional.conv2d, (torch.randn(1, 4, 8, 8), torch.randn(6, 3, 3, 3))),
    (torch.nn.functional.conv2d, (torch.randn(1, 3, 2, 2), torch.randn(6, 3, 3, 3))),
    (torch.nn.functional.scaled_dot_product_attention, (torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 6),
                                                        torch.randn(1, 2, 5, 8))),
    (torch.nn.functional.linear, (torch.randn(2, 5), torch.randn(3, 4))),
    (torch.addmm, (torch.randn(3), torch.randn(2, 5), torch.randn(4, 3))),
])
def test_a_shape_mismatch_raises_as_torch_does(fn, args):
    with pytest.raises(RuntimeError) as real:
        fn(*args)
    with pytest.raises(RuntimeError, match=re.escape(str(real.value).splitlines()[0])):
        _dry(fn, *args)


def test_a_dtype_mismatch_raises_as_torch_does():
    with pytest.raises(RuntimeError, match="same dtype"):
        _dry(torch.nn.functional.linear, torch.randn(2, 4, dtype=torch.float64), torch.randn(3, 4))


_READS = {
    "bool": lambda h: bool(h.sum() > 0),
    "item": lambda h: h.sum().item(),
    "tolist": lambda h: h.tolist(),
    "equal": lambda h: torch.equal(h, h),
    "argmax (an index tensor)": lambda h: h.argmax(-1),
    "nonzero (a value-dependent shape)": lambda h: torch.nonzero(h),
    "unique": lambda h: torch.unique(h),
    "a view of a tainted write": lambda h: _write_through_view(h),
}


def _write_through_view(h):
    buffer = torch.ones(2, 3)
    buffer.view(-1)[:3] = h[0]  # a write into a view taints the whole storage
    return buffer[1].sum().item()


@pytest.mark.parametrize("read", list(_READS))
def test_reading_a_value_that_a_skipped_product_sets_raises(read):
    layer = torch.nn.Linear(4, 3)
    with pytest.raises(ValueDependent):
        _dry(lambda x: _READS[read](layer(x)), torch.randn(2, 4))


def test_values_that_no_skipped_product_reaches_can_be_read():
    layer = torch.nn.Linear(4, 3)

    def forward(x):
        positions = torch.arange(x.shape[0])  # input-derived integers, as HF code makes masks and positions
        count = int((x > 0).sum())
        return layer(x)[positions] * count

    out, mode = _dry(forward, torch.randn(2, 4))
    assert out.shape == (2, 3) and mode.skipped == 1


def test_batch_norm_in_training_mode_refuses_to_update_its_statistics_from_zeros():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    model[1].running_mean.fill_(5.0)  # an update from the zeros would move it towards 0
    before = model[1].running_mean.clone()
    with pytest.raises(ValueDependent, match="running statistics"):
        _dry(model.train(), torch.randn(5, 4))
    assert torch.equal(model[1].running_mean, before)
    out, _ = _dry(model.eval(), torch.randn(5, 4))
    assert out.shape == (5, 3)


class _Branching(torch.nn.Module):
    """fx cannot trace it; the branch taken depends on a linear layer's output (positive here)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 8)
        self.b = torch.nn.Linear(8, 2)
        self.c = torch.nn.Linear(8, 2)
        with torch.no_grad():
            self.a.weight.zero_()
            self.a.bias.fill_(1.0)

    def forward(self, x):
        h = self.a(x)
        return self.b(h) if h.sum() > 0 else self.c(h)


def test_capture_follows_the_real_branch_when_the_code_reads_values():
    model = _Branching()
    analysis = Analysis(model, torch.randn(2, 4))
    assert analysis.capture.method == "dispatch"
    modules = {str(n.target) for n in analysis.capture.nodes() if n.op == "call_module"}
    assert modules == {"a", "b"}  # zeros would have taken the branch through c
    masks = {"a": {"weight": torch.ones(8, 4), "bias": torch.ones(8)}}
    masks["a"]["weight"][:4] = 0
    masks["a"]["bias"][:4] = 0
    reference = copy.deepcopy(model)
    x = torch.randn(3, 4)
    with torch.no_grad():
        reference.a.weight.mul_(masks["a"]["weight"])
        reference.a.bias.mul_(masks["a"]["bias"])
        expected = reference(x)
    with pytest.warns(UserWarning, match="modules c never ran"):
        ModelSpeedup(model, torch.randn(2, 4), masks).speedup_model()
    assert model.a.out_features == 4 and model.b.in_features == 4
    torch.testing.assert_close(model(x), expected)


def test_check_shapes_raises_the_models_own_shape_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(6, 2))
    with pytest.raises(RuntimeError, match=r"mat1 and mat2 shapes cannot be multiplied \(2x8 and 6x2\)"):
        check_shapes(model, (torch.randn(2, 4),), {})
    check_shapes(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)), (torch.randn(2, 4),), {})


def test_a_channels_last_convolution_gives_a_channels_last_result():
    x, weight = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last), torch.randn(4, 3, 3, 3)
    out, mode = _dry(torch.nn.functional.conv2d, x, weight)
    assert out.stride() == torch.nn.functional.conv2d(x, weight).stride() and mode.skipped == 1


def test_under_autocast_and_for_integer_operands_torch_runs_the_op():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, mode = _dry(torch.nn.functional.linear, torch.randn(2, 3), torch.randn(4, 3))
    assert out.dtype == torch.bfloat16 and mode.skipped == 0
    x, weight = torch.ones(1, 3, 4, 4, dtype=torch.long), torch.ones(2, 3, 3, 3, dtype=torch.long)
    out, mode = _dry(torch.nn.functional.conv2d, x, weight)
    assert mode.skipped == 0 and torch.equal(out, torch.nn.functional.conv2d(x, weight))


@pytest.mark.parametrize("build, inputs, attention", [
    ("bert", "token_ids", "sdpa"), ("gpt2", "token_ids", "sdpa"), ("gpt2", "token_ids", "eager"),
    ("llama", "token_ids", "sdpa"), ("vit", "pixels", "sdpa")])
def test_a_dry_recording_of_a_transformer_is_the_real_recording(build, inputs, attention):
    pytest.importorskip("transformers")
    from nncore.speedup.capture import _Recorder
    from nncore.speedup.ruletable import extra_rules, find_rule
    from tests.speedup import hf_models

    model, x = getattr(hf_models, build)(), getattr(hf_models, inputs)()
    model.config._attn_implementation = attention  # eager: q @ k^T and the weights @ v as matmuls
    args, kwargs = ((), x) if isinstance(x, dict) else ((x,), {})
    rules = extra_rules()

    def recorded(mode=None):
        recorder = _Recorder(model, lambda module: find_rule(module, rules) is not None)
        recorder.record(args, kwargs, mode)
        return [(n.op, str(n.target), tuple(recorder.values[n].shape)
                 if isinstance(recorder.values.get(n), torch.Tensor) else None) for n in recorder.graph.nodes]

    dry = DryRun()
    assert recorded(dry) == recorded()
    assert dry.skipped >= 8  # every projection of two layers at least
