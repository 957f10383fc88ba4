"""Real int8: a quantized (or plain float) model becomes an int8 ONNX model for ONNX Runtime.

``export_int8_onnx(model, calibration, onnx_path, input_shape=None, *, dummy_input=None, mode="static")``:

1. Deployable float copy: quantizer wrappers give back their layers holding the quantized
   weights (``inference_modules()``), and every BatchNorm that directly follows a Conv/Linear
   is folded into it.
2. ONNX export of that copy (below), then ONNX Runtime's ``quant_pre_process`` (shape
   inference and graph optimization).
3. ``mode="static"``: QDQ nodes with the ranges of the calibration config, no second
   calibration (:mod:`nncore.speedup.int8_static`); ``mode="dynamic"``: Linear layers get
   weights quantized offline and activations quantized at run time, the calibration is
   optional (:mod:`nncore.speedup.int8_dynamic`).

**How the model is exported.** ``torch.onnx.export(..., dynamo=False)``, the TorchScript
exporter, with ``dynamic_axes``. On torch 2.13 with Hugging Face transformers 5.x it exports
``BertModel(BertConfig(...))`` and ``LlamaForCausalLM(LlamaConfig(...))`` in about a second,
and the graph gives the model's output (to 1e-6) at other batch sizes and sequence lengths.
Its node names carry the module scopes (``/model/encoder/layer.0/attention/self/query/MatMul``),
which is how the calibration's layers are found in the graph. ``dynamo=True`` was tried and
not chosen: it needs ``onnxscript``, which is no dependency of nncore and is absent here; with it
installed, the same tiny BERT took about 50 s to export, a batch of 1 in the example was
specialized to a fixed batch of 1 (torch.export's 0/1 specialization), and node names lose the
module scopes (``node_MatMul_50``). One limit of the TorchScript exporter: a Llama called with
``use_cache=False`` and no ``attention_mask`` runs ``torch.diff`` (packed-sequence detection),
which it cannot export; give ``attention_mask`` in ``dummy_input``, or leave ``use_cache`` on.

The exported module wraps the model: tensors of ``dummy_input`` become the graph inputs (named by
their keys; one tensor is ``input``), its other values are passed as constants, and the outputs
are the tensors the model returns (a ``ModelOutput``'s by their keys; a cache or other non-tensor
is dropped; one tensor is ``output``). Dynamic axes: by default the batch axis (0) of every input
and the sequence axis (1) of integer inputs (token ids, attention masks), so the model runs at any
batch size; ``dynamic_axes`` sets them per input (``{}``: every size fixed).
"""
from __future__ import annotations

import inspect
import io
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import onnx
import torch
import torch.nn as nn

from nncore.artifacts import PathLike, atomic_write, load_torch
from nncore.compressor import set_submodule, without_quantizer_wrappers
from nncore.errors import ArtifactError, ConfigError, SpeedupError
from nncore.speedup.int8_dynamic import DynamicRewriter
from nncore.speedup.int8_static import QdqRewriter
from nncore.speedup.onnx_graph import Scopes
from nncore.utils.batchnorm import find_following_batchnorms
from nncore.wrapper import fold_batchnorm

__all__ = ["export_float_onnx", "export_int8_onnx", "load_calibration"]

MODES = ("static", "dynamic")
WRAPPED = "model"
"""The attribute under which the exported wrapper holds the model (the first scope of every node)."""


def load_calibration(calibration: PathLike | Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A calibration config from a file written by ``export_model(calibration_path=...)``, or checked as given.

    :raises ArtifactError: it is not ``{layer name: {key: value}}``.
    """
    source = "calibration" if isinstance(calibration, Mapping) else f"calibration file {str(calibration)!r}"
    data = calibration if isinstance(calibration, Mapping) else load_torch(calibration, "calibration file")
    if not isinstance(data, Mapping) or not all(isinstance(k, str) and isinstance(v, Mapping) for k, v in data.items()):
        raise ArtifactError(f"{source}: not a calibration config: expected {{layer name: {{'weight_bits': ..., ...}}}}")
    for name, entry in data.items():
        for kind in ("input", "output"):
            if f"{kind}_bits" in entry and not all(f"tracked_{e}_{kind}" in entry for e in ("min", "max")):
                raise ArtifactError(f"{source}: layer {name!r} has {kind}_bits but no tracked_min/max_{kind}")
    return {name: dict(entry) for name, entry in data.items()}


# -- 1. example inputs and the deployable float model -------------------------------------------

class ExampleInputs:
    """What the model is called with: graph inputs (named tensors), constants, dynamic axes.

    :param input_shape: a float input of this shape (random values), or
    :param dummy_input: a tensor, a tuple/list of tensors (positional), or a dict of keyword
        inputs (tensors become graph inputs, other values constants).
    :param dynamic_axes: ``{input name: [axes]}``; default: axis 0 of every input, and axis 1 of
        integer inputs.
    """

    def __init__(self, input_shape: Sequence[int] | None, dummy_input: Any,
                 dynamic_axes: Mapping[str, Sequence[int]] | None, device: torch.device):
        if (input_shape is None) == (dummy_input is None):
            raise ConfigError("give input_shape (a float input of that shape) or dummy_input (the model's inputs), "
                              "exactly one of them", header="invalid argument")
        if input_shape is not None:
            if not (isinstance(input_shape, (list, tuple)) and input_shape
                    and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape)):
                raise ConfigError(f"input_shape must be a list of positive ints, got {input_shape!r}",
                                  header="invalid argument")
            dummy_input = torch.randn(*input_shape)
        self.keywords = isinstance(dummy_input, Mapping)
        if isinstance(dummy_input, torch.Tensor):
            items = {"input": dummy_input}
        elif isinstance(dummy_input, (tuple, list)) and dummy_input and all(isinstance(t, torch.Tensor) for t in dummy_input):
            items = {f"input_{i}": t for i, t in enumerate(dummy_input)}
        elif self.keywords and dummy_input and all(isinstance(k, str) for k in dummy_input):
            items = dict(dummy_input)
        else:
            raise ConfigError(f"dummy_input must be a tensor, a tuple/list of tensors or a dict of keyword inputs, "
                              f"got {type(dummy_input).__name__}", header="invalid argument")
        self.tensors = {k: v.to(device) for k, v in items.items() if isinstance(v, torch.Tensor)}
        self.constants = {k: v for k, v in items.items() if not isinstance(v, torch.Tensor)}
        if not self.tensors:
            raise ConfigError("dummy_input holds no tensor", header="invalid argument")
        unknown = sorted(set(dynamic_axes or {}) - set(self.tensors))
        if unknown:
            raise ConfigError(f"dynamic_axes names inputs that dummy_input does not have: {', '.join(unknown)} "
                              f"(inputs: {', '.join(self.tensors)})", header="invalid argument")
        if dynamic_axes is None:
            dynamic_axes = {k: ([0] if t.is_floating_point() else [0, 1])[: t.dim()] for k, t in self.tensors.items()}
        self.dynamic_axes = {k: {int(a): f"{k}_dim{int(a)}" for a in axes} for k, axes in dynamic_axes.items() if axes}

    @property
    def names(self) -> list[str]:
        return list(self.tensors)

    def call(self, model: nn.Module, *tensors: torch.Tensor) -> Any:
        if self.keywords:
            return model(**dict(zip(self.tensors, tensors)), **self.constants)
        return model(*tensors)

    def describe(self) -> str:
        return ", ".join(f"{k}: {list(t.shape)} {str(t.dtype).removeprefix('torch.')}" for k, t in self.tensors.items())


def _output_tensors(output: Any, name: str = "output") -> list[tuple[str, torch.Tensor]]:
    """The tensors of a model's output with names: a tensor, a tuple/list, a dict or ``ModelOutput``."""
    if isinstance(output, torch.Tensor):
        return [(name, output)]
    if isinstance(output, Mapping):
        return [pair for key, value in output.items() for pair in _output_tensors(value, str(key))]
    if isinstance(output, (tuple, list)):
        return [pair for i, value in enumerate(output) for pair in _output_tensors(value, f"{name}_{i}")]
    return []


class _Exportable(nn.Module):
    """The model called with the example's inputs, returning only the tensors of its output."""

    def __init__(self, model: nn.Module, example: ExampleInputs):
        super().__init__()
        setattr(self, WRAPPED, model)
        self.example = example

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t for _, t in _output_tensors(self.example.call(getattr(self, WRAPPED), *tensors)))


def deployable_model(model: nn.Module, example: ExampleInputs) -> tuple[nn.Module, dict[str, nn.Module]]:
    """A float copy of ``model`` without quantizer wrappers and with BatchNorms folded (in eval mode).

    Returns the copy and ``{layer name: BatchNorm}`` for the BatchNorms folded here.
    """
    plain = without_quantizer_wrappers(model)
    plain.eval()
    layers = [n for n, m in plain.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
    try:
        with torch.no_grad():
            example.call(plain, *example.tensors.values())
    except Exception as exc:  # noqa: BLE001 - any failure of the user's model on the example
        raise ConfigError(f"the model cannot be run on the example input ({example.describe()}): "
                          f"{type(exc).__name__}: {exc}", header="invalid argument") from exc
    arguments = () if example.keywords else tuple(example.tensors.values())
    keywords = {**example.tensors, **example.constants} if example.keywords else {}
    pairs = find_following_batchnorms(plain, layers, arguments, keywords)
    folded = {}
    with torch.no_grad():
        for layer_name, bn_name in pairs.items():
            layer, bn = plain.get_submodule(layer_name), plain.get_submodule(bn_name)
            weight, bias = fold_batchnorm(layer.weight, layer.bias, bn)
            layer.weight.copy_(weight)
            layer.bias = nn.Parameter(bias.detach().clone())
            set_submodule(plain, bn_name, nn.Identity())
            folded[layer_name] = bn
    return plain, folded


def _onnx_bytes(plain: nn.Module, example: ExampleInputs) -> tuple[bytes, Scopes]:
    """The TorchScript export of ``plain`` on the example, and the scopes of its nodes."""
    wrapper = _Exportable(plain, example).eval()
    result: list[Any] = []
    with torch.no_grad():  # the wrapper writes no scope of its own: calling the model directly names the same scopes
        scopes = Scopes.record(wrapper, lambda: result.append(example.call(plain, *example.tensors.values())),
                               prefix=WRAPPED)
    outputs = [name for name, _ in _output_tensors(result[0])]
    if not outputs:
        raise ConfigError("the model returns no tensor to export", header="invalid argument")
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, tuple(example.tensors.values()), buffer, dynamo=False,
                              input_names=example.names, output_names=outputs, dynamic_axes=example.dynamic_axes)
    except Exception as exc:  # noqa: BLE001 - the exporter's own errors name the unsupported operator
        hint = ""
        if "attention_mask" not in example.tensors and "attention_mask" in inspect.signature(plain.forward).parameters:
            hint = ("; Hugging Face decoders (Llama) export only with an attention mask: "
                    "dummy_input={'input_ids': ids, 'attention_mask': torch.ones_like(ids)}")
        raise SpeedupError(f"ONNX export of the model failed: {type(exc).__name__}: {exc}{hint}") from exc
    return buffer.getvalue(), scopes


def _prepared(float_bytes: bytes) -> onnx.ModelProto:
    """ONNX Runtime's ``quant_pre_process`` of a model: ONNX shape inference and graph
    optimization (ONNX Runtime's symbolic shape inference is skipped: it gives up on the
    dynamic sequence axes of Hugging Face models)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as directory:
        float_path, prepared_path = Path(directory, "float.onnx"), Path(directory, "prepared.onnx")
        float_path.write_bytes(float_bytes)
        quant_pre_process(str(float_path), str(prepared_path), skip_symbolic_shape=True)
        return onnx.load(str(prepared_path))


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


# -- 2. the entry points ------------------------------------------------------------------------

def export_float_onnx(
    model: nn.Module,
    onnx_path: PathLike,
    input_shape: Sequence[int] | None = None,
    *,
    dummy_input: Any = None,
    dynamic_axes: Mapping[str, Sequence[int]] | None = None,
) -> Path:
    """Write the float ONNX model that :func:`export_int8_onnx` starts from (quantizer wrappers
    removed, BatchNorms folded, the same inputs, outputs and dynamic axes): the fp32 baseline,
    and what ONNX Runtime's own ``quantize_static`` / ``quantize_dynamic`` take.

    :return: ``onnx_path`` as a :class:`~pathlib.Path`.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}", header="invalid argument")
    example = ExampleInputs(input_shape, dummy_input, dynamic_axes, _device(model))
    plain, _ = deployable_model(model, example)
    data, _ = _onnx_bytes(plain, example)
    return atomic_write(onnx_path, lambda handle: handle.write(data))


def export_int8_onnx(
    model: nn.Module,
    calibration: PathLike | Mapping[str, Any] | None,
    onnx_path: PathLike,
    input_shape: Sequence[int] | None = None,
    *,
    dummy_input: Any = None,
    mode: str = "static",
    dynamic_axes: Mapping[str, Sequence[int]] | None = None,
    reduce_range: bool = True,
    per_channel: bool = True,
) -> Path:
    """Write an int8 ONNX model that ONNX Runtime runs with integer kernels (see the module docstring).

    :param model: a model quantized by an nncore quantizer (wrapped), or a plain float model
        (e.g. unwrapped, or pruned and sped up) whose layer names match the calibration keys.
    :param calibration: the calibration config (a dict, or the path written by
        ``export_model(calibration_path=...)``); ``mode="static"`` uses its tracked ranges as they
        are; ``mode="dynamic"`` quantizes the Linear layers it names with weights (``None``: every
        Linear layer).
    :param onnx_path: where to write the model (atomically: a failure leaves no file behind).
    :param input_shape: the shape of a float input, e.g. ``[1, 3, 224, 224]``; or
    :param dummy_input: the model's example input, for inputs that are not one float tensor: token
        ids, ``{'input_ids': ids, 'attention_mask': mask}`` (keyword inputs), a tuple of tensors.
    :param mode: ``"static"`` (QDQ from the calibration: CNNs) or ``"dynamic"`` (activations
        quantized at run time: BERT/Llama-like models, dynamic sequence lengths).
    :param dynamic_axes: ``{input name: [axes]}`` that may change size at run time (default: the
        batch axis 0 of every input, and axis 1 of integer inputs; ``{}`` for none).
    :param reduce_range: 7-bit weights, which avoids int16 saturation in ONNX Runtime's u8s8
        kernels on CPUs without VNNI (the weights are requantized per channel either way).
    :param per_channel: ``mode="dynamic"`` only: one weight scale per output column (default) or one
        per layer (``False``, with ``reduce_range=False`` what ONNX Runtime's ``quantize_dynamic``
        writes by default: a little faster, less accurate). Static int8 takes the quantizer's
        per-channel weights.
    :return: ``onnx_path`` as a :class:`~pathlib.Path`.
    :raises ConfigError: a bad argument (mode, calibration, inputs the model cannot run).
    :raises SpeedupError: the exporter cannot export the model.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}", header="invalid argument")
    if mode not in MODES:
        raise ConfigError(f"mode: {mode!r} is not 'static' or 'dynamic'", header="invalid argument")
    if calibration is None and mode == "static":
        raise ConfigError("mode='static' needs the calibration config of a quantizer (its tracked ranges); "
                          "use mode='dynamic' to quantize without one", header="invalid argument")
    if not per_channel and mode == "static":
        raise ConfigError("per_channel=False applies to mode='dynamic' only (static int8 takes the quantizer's "
                          "per-channel weights)", header="invalid argument")
    calibration = None if calibration is None else load_calibration(calibration)
    example = ExampleInputs(input_shape, dummy_input, dynamic_axes, _device(model))
    plain, bn_folded = deployable_model(model, example)
    missing = sorted(set(calibration or {}) - {n for n, _ in plain.named_modules()})
    if missing:
        raise ConfigError(f"calibration names layers the model does not have: {', '.join(missing)}", header="invalid argument")
    float_bytes, scopes = _onnx_bytes(plain, example)
    # dynamic int8 rewrites the exported graph as it is: the pre-processing that static int8 needs
    # (shape inference, ONNX Runtime's offline optimization) makes it ~5% slower on BERT-base
    prepared = _prepared(float_bytes) if mode == "static" else onnx.load_from_string(float_bytes)
    if mode == "static":
        int8 = QdqRewriter(prepared, calibration, bn_folded, reduce_range, scopes).rewrite()
    else:
        weighted = None if calibration is None else {k for k, v in calibration.items() if "weight_bits" in v}
        int8 = DynamicRewriter(prepared, reduce_range, scopes, weighted, per_channel).rewrite()
    data = int8.SerializeToString()
    return atomic_write(onnx_path, lambda handle: handle.write(data))
