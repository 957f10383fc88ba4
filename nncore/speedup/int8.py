"""Real int8: a quantized model and its calibration become an int8 ONNX model for ONNX Runtime.

``export_int8_onnx(model, calibration, onnx_path, input_shape)``:

1. Deployable float copy: quantizer wrappers give back their layers holding the quantized
   weights (``inference_modules()``), and every BatchNorm that directly follows a Conv/Linear
   is folded into it.
2. ONNX export (TorchScript exporter) and ONNX Runtime's ``quant_pre_process`` (shape
   inference and graph optimization).
3. QDQ insertion with the ranges the quantizer learned -- no second calibration:

   * the input of a calibrated layer: the layer's ``tracked_*_input`` range;
   * the output of a calibrated layer, or of an ``Add``, after the ``Relu`` that follows it
     (the ``Relu`` is removed: a zero point of 0 clamps like it): the tracked input range of
     the calibrated layers that read it (through ``MaxPool``/``Flatten``/``Reshape``), else the
     layer's ``tracked_*_output`` range (pushed through a BatchNorm folded at export);
   * ``MaxPool`` keeps its input's parameters; ``GlobalAveragePool`` and ``AveragePool`` take
     their readers' range;
   * a calibrated module without weight (ReLU6, ReLU, pooling ...: NNI's ``'op_types': ['ReLU6']``
     with ``quant_types ['output']``): its tracked input/output range on the tensors its call
     reads/writes, found from the scope names the TorchScript exporter gives the nodes
     (``/layers/layers.0/act/Clip`` is module ``layers.0.act``). A ``Clip`` at 0 (ReLU6) that
     follows a layer is fused like a ``Relu``: the range ``[0, min(max, clip max)]`` clamps like it.

   Activations are uint8 (affine), weights int8 per output channel (symmetric; 7-bit with
   ``reduce_range`` to avoid the int16 saturation of u8s8 kernels on CPUs without VNNI), biases
   int32. A tensor without a known range stays float, and so does its layer.

ONNX Runtime then fuses the QDQ pattern into ``QLinearConv``, ``QLinearAdd``, ``QGemm``, ...
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import helper, numpy_helper

from nncore.artifacts import PathLike, atomic_write, load_torch
from nncore.compressor import onnx_export_bytes, set_submodule, without_quantizer_wrappers
from nncore.errors import ArtifactError, ConfigError
from nncore.utils.batchnorm import find_following_batchnorms
from nncore.wrapper import fold_batchnorm

__all__ = ["export_int8_onnx", "load_calibration"]

LAYER_OPS = ("Conv", "Gemm")
RANGE_PRESERVING = ("MaxPool", "Flatten", "Reshape", "Identity", "Squeeze", "Unsqueeze")
AVERAGING = ("GlobalAveragePool", "AveragePool")
Range = tuple[float, float]


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


# -- 1. the deployable float model -------------------------------------------------------------

def deployable_model(model: nn.Module, input_shape: Sequence[int]) -> tuple[nn.Module, dict[str, nn.Module]]:
    """A float copy of ``model`` without quantizer wrappers and with BatchNorms folded (in eval mode).

    Returns the copy and ``{layer name: BatchNorm}`` for the BatchNorms folded here.
    """
    plain = without_quantizer_wrappers(model)
    plain.eval()
    layers = [n for n, m in plain.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
    device = next((p.device for p in plain.parameters()), torch.device("cpu"))
    pairs = find_following_batchnorms(plain, layers, (torch.zeros(*input_shape, device=device),))
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


# -- 2. ranges ---------------------------------------------------------------------------------

def _activation_qparams(low: float, high: float) -> tuple[float, int]:
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max((high - low) / 255.0, 1e-12)
    return scale, int(np.clip(round(-low / scale), 0, 255))


def _output_range(entry: Mapping[str, Any], bn: nn.Module | None) -> Range | None:
    if "output_bits" not in entry:
        return None
    low, high = float(entry["tracked_min_output"]), float(entry["tracked_max_output"])
    if bn is None or entry.get("folded_batchnorm"):
        return low, high
    # the tracked range is before the BatchNorm folded at export: bound it channel by channel
    with torch.no_grad():
        factor = (bn.weight if bn.weight is not None else 1.0) / torch.sqrt(bn.running_var + bn.eps)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
        ends = torch.stack([(low - bn.running_mean) * factor + beta, (high - bn.running_mean) * factor + beta])
    return float(ends.min()), float(ends.max())


class _Graph:
    """Indexes of an ONNX graph: producers, consumers, initializers."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self.reindex()

    def reindex(self) -> None:
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.outputs = {o.name for o in self.graph.output}
        self.producer = {out: node for node in self.graph.node for out in node.output}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in self.graph.node:
            for index, name in enumerate(node.input):
                self.consumers.setdefault(name, []).append((node, index))

    def only_consumer(self, tensor: str) -> onnx.NodeProto | None:
        uses = self.consumers.get(tensor, [])
        return uses[0][0] if len(uses) == 1 and tensor not in self.outputs else None


def _unqualified(name: str) -> str:
    """The scope segment the TorchScript exporter writes for module ``name``: from its last
    non-numeric atom on (``layers.0`` stays, ``blocks.0.act`` is ``act``)."""
    atoms = name.split(".")
    for index in reversed(range(len(atoms))):
        if not atoms[index].isnumeric():
            return ".".join(atoms[index:])
    return name


class _Scopes:
    """Which module a node of a TorchScript-exported graph belongs to, from its name.

    A node is named ``/<segment>/.../<op>``, one segment per module call on the stack; a module
    called again gets ``_1``, ``_2`` ... appended to its segment.
    """

    def __init__(self, module_names: Sequence[str]):
        self.by_segment: dict[str, list[str]] = {}
        for name in module_names:
            if name:
                self.by_segment.setdefault(_unqualified(name), []).append(name)

    @staticmethod
    def scope(node: onnx.NodeProto) -> str:
        return node.name.rsplit("/", 1)[0] if node.name.startswith("/") else ""

    def module(self, scope: str) -> str | None:
        current = ""
        for segment in scope.strip("/").split("/") if scope.strip("/") else ():
            found = self._child(current, segment)
            if found is None and re.fullmatch(r".+_\d+", segment):
                found = self._child(current, segment.rsplit("_", 1)[0])
            if found is None:
                return None
            current = found
        return current

    def _child(self, parent: str, segment: str) -> str | None:
        prefix = f"{parent}." if parent else ""
        candidates = [n for n in self.by_segment.get(segment, ()) if n.startswith(prefix)]
        return min(candidates, key=lambda n: n.count("."), default=None)


def _module_calls(g: _Graph, scopes: _Scopes, names: set[str]) -> dict[str, list[tuple[list[str], list[str]]]]:
    """``{module name: [(input tensors, output tensors) of each call]}`` for the modules in ``names``."""
    by_scope: dict[str, list[onnx.NodeProto]] = {}
    for node in g.graph.node:
        scope = scopes.scope(node)
        while scope:
            by_scope.setdefault(scope, []).append(node)
            scope = scope.rsplit("/", 1)[0]
    calls: dict[str, list[tuple[list[str], list[str]]]] = {}
    for scope, nodes in by_scope.items():
        module = scopes.module(scope)
        if module not in names:
            continue
        produced = {out for node in nodes for out in node.output}
        members = {id(node) for node in nodes}
        inputs = list(dict.fromkeys(
            name for node in nodes for name in node.input
            if name and name not in produced and name not in g.initializers))
        outputs = [out for out in dict.fromkeys(produced)
                   if out in g.outputs or any(id(c) not in members for c, _ in g.consumers.get(out, []))]
        calls.setdefault(module, []).append((inputs, outputs))
    return calls


def _clip_bounds(g: _Graph, node: onnx.NodeProto) -> Range | None:
    """``(min, max)`` of a ``Clip`` whose bounds are constants (``None`` otherwise)."""
    bounds = []
    for position in (1, 2):
        name = node.input[position] if len(node.input) > position else ""
        if not name:
            bounds.append(-np.inf if position == 1 else np.inf)
        elif name in g.initializers:
            bounds.append(float(numpy_helper.to_array(g.initializers[name])))
        else:
            return None
    return bounds[0], bounds[1]


class _Int8Rewriter:
    def __init__(self, model: onnx.ModelProto, calibration: dict[str, dict[str, Any]],
                 bn_folded: dict[str, nn.Module], reduce_range: bool, module_names: Sequence[str]):
        self.g = _Graph(model)
        self.calibration = calibration
        self.bn_folded = bn_folded
        self.weight_qmax = 63 if reduce_range else 127
        self.layers = {}  # node name -> calibration key
        for node in self.g.graph.node:
            if node.op_type in LAYER_OPS and len(node.input) > 1:
                key = node.input[1][: -len(".weight")] if node.input[1].endswith(".weight") else None
                if key in calibration and node.input[1] in self.g.initializers:
                    self.layers[node.name] = key
        self.qparams: dict[str, tuple[float, int]] = {}
        self.module_input_ranges: dict[tuple[str, str], Range] = {}  # (tensor, reading node) -> range
        self.module_output_ranges: dict[str, Range] = {}
        self._find_module_ranges(module_names)

    def _find_module_ranges(self, module_names: Sequence[str]) -> None:
        """Ranges of calibrated modules that are not Conv/Gemm layers, on the tensors of each call."""
        names = set(self.calibration) - set(self.layers.values())
        for name, calls in _module_calls(self.g, _Scopes(module_names), names).items():
            entry = self.calibration[name]
            for inputs, outputs in calls:
                if "input_bits" in entry and len(inputs) == 1:
                    for node, _ in self.g.consumers.get(inputs[0], []):
                        self.module_input_ranges[(inputs[0], node.name)] = (
                            float(entry["tracked_min_input"]), float(entry["tracked_max_input"]))
                if "output_bits" in entry and len(outputs) == 1:
                    self.module_output_ranges[outputs[0]] = (
                        float(entry["tracked_min_output"]), float(entry["tracked_max_output"]))

    def input_range(self, node: onnx.NodeProto) -> Range | None:
        entry = self.calibration.get(self.layers.get(node.name, ""), {})
        if "input_bits" not in entry:
            return None
        return float(entry["tracked_min_input"]), float(entry["tracked_max_input"])

    def readers_range(self, tensor: str) -> Range | None:
        """Union of the tracked input ranges of every calibrated layer that reads ``tensor``
        (through range-preserving ops); ``None`` if anything else reads it."""
        uses = self.g.consumers.get(tensor, [])
        if not uses or tensor in self.g.outputs:
            return None
        ranges = []
        for node, index in uses:
            if node.name in self.layers and index == 0 and self.input_range(node) is not None:
                ranges.append(self.input_range(node))
            elif (tensor, node.name) in self.module_input_ranges:
                ranges.append(self.module_input_ranges[(tensor, node.name)])
            elif node.op_type in RANGE_PRESERVING and index == 0:
                ranges.append(self.readers_range(node.output[0]))
            else:
                return None
        if any(r is None for r in ranges):
            return None
        return min(r[0] for r in ranges), max(r[1] for r in ranges)

    def sum_range(self, add: onnx.NodeProto) -> Range | None:
        """A bound of an ``Add``'s output from the quantization ranges of its two inputs."""
        params = [self.qparams.get(name) for name in add.input]
        if len(params) != 2 or any(p is None for p in params):
            return None
        ranges = [(-zero_point * scale, (255 - zero_point) * scale) for scale, zero_point in params]
        return ranges[0][0] + ranges[1][0], ranges[0][1] + ranges[1][1]

    # the passes, in order

    def assign_outputs(self) -> None:
        """In graph order: outputs of calibrated layers and of Adds (a following Relu or
        Clip at 0 fused away), outputs of calibrated modules without weight, then pools whose
        input is quantized."""
        for node in list(self.g.graph.node):
            if node.name in self.layers or node.op_type == "Add":
                self.assign_output(node)
            elif node.output and node.output[0] in self.module_output_ranges and node.output[0] not in self.qparams:
                found = self.readers_range(node.output[0]) or self.module_output_ranges[node.output[0]]
                self.qparams[node.output[0]] = _activation_qparams(*found)
            else:
                self.assign_pool(node)

    def _fusable_activation(self, tensor: str) -> tuple[onnx.NodeProto, float] | None:
        """The ``Relu`` or ``Clip`` at 0 that alone reads ``tensor``, and its upper bound."""
        node = self.g.only_consumer(tensor)
        if node is None or node.output[0] in self.g.outputs:
            return None
        if node.op_type == "Relu":
            return node, np.inf
        bounds = _clip_bounds(self.g, node) if node.op_type == "Clip" else None
        if bounds is not None and bounds[0] == 0.0 and bounds[1] > 0.0:
            return node, bounds[1]
        return None

    def assign_output(self, node: onnx.NodeProto) -> None:
        activation = self._fusable_activation(node.output[0])
        target = activation[0].output[0] if activation else node.output[0]
        found = self.readers_range(target) or self.module_output_ranges.get(target)
        if found is None and node.name in self.layers:
            found = _output_range(self.calibration[self.layers[node.name]], self.bn_folded.get(self.layers[node.name]))
        if found is None and node.op_type == "Add":
            found = self.sum_range(node)
        if found is None:
            return
        if activation:  # zero point 0 clamps at 0, the range's end at the top: the layer writes the activation's output
            found = (0.0, min(max(found[1], 0.0), activation[1]))
            node.output[0] = target
            self.g.graph.node.remove(activation[0])
            self.g.reindex()
        self.qparams[target] = _activation_qparams(*found)

    def assign_pool(self, node: onnx.NodeProto) -> None:
        if not node.input or node.input[0] not in self.qparams or node.output[0] in self.qparams:
            return
        if node.op_type == "MaxPool":
            self.qparams[node.output[0]] = self.qparams[node.input[0]]
        elif node.op_type in AVERAGING:
            found = self.readers_range(node.output[0])
            if found is not None:
                self.qparams[node.output[0]] = _activation_qparams(*found)

    def assign_inputs(self) -> None:
        """Inputs of calibrated layers and modules that are still float (e.g. the model input)."""
        for node in list(self.g.graph.node):
            module_input = next((node.input[i] for i in range(len(node.input))
                                 if (node.input[i], node.name) in self.module_input_ranges), None)
            if node.name in self.layers and self.input_range(node) is not None and node.input[0] not in self.qparams:
                found = self.readers_range(node.input[0]) or self.input_range(node)
                self.qparams[node.input[0]] = _activation_qparams(*found)
            elif module_input is not None and module_input not in self.qparams:
                found = self.readers_range(module_input) or self.module_input_ranges[(module_input, node.name)]
                self.qparams[module_input] = _activation_qparams(*found)
            else:
                self.assign_pool(node)

    def _add_initializer(self, name: str, array: np.ndarray) -> str:
        self.g.graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def insert_activation_qdq(self) -> None:
        new_nodes = []
        for tensor, (scale, zero_point) in self.qparams.items():
            s = self._add_initializer(f"{tensor}/scale", np.array(scale, dtype=np.float32))
            z = self._add_initializer(f"{tensor}/zero_point", np.array(zero_point, dtype=np.uint8))
            if tensor in self.g.outputs:
                source, result = f"{tensor}/float", tensor
                producer = self.g.producer[tensor]
                producer.output[list(producer.output).index(tensor)] = source
            else:
                source, result = tensor, f"{tensor}/dq"
                for consumer, index in self.g.consumers.get(tensor, []):
                    consumer.input[index] = result
            new_nodes += [
                helper.make_node("QuantizeLinear", [source, s, z], [f"{tensor}/q"], name=f"{tensor}/QuantizeLinear"),
                helper.make_node("DequantizeLinear", [f"{tensor}/q", s, z], [result], name=f"{tensor}/DequantizeLinear"),
            ]
        self.g.graph.node.extend(new_nodes)
        self.g.reindex()

    def quantize_layer_parameters(self) -> None:
        """int8 weights (per output channel) and int32 biases for layers whose input is quantized."""
        new_nodes = []
        for node in self.g.graph.node:
            if node.name not in self.layers:
                continue
            x = self.g.producer.get(node.input[0])
            if x is None or x.op_type != "DequantizeLinear":
                continue
            x_scale = float(numpy_helper.to_array(self.g.initializers[x.input[1]]))
            weight_name = node.input[1]
            weight = numpy_helper.to_array(self.g.initializers[weight_name]).astype(np.float64)
            axis = 1 if node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute) else 0
            moved = np.moveaxis(weight, axis, 0)
            absmax = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
            w_scale = np.maximum(absmax / self.weight_qmax, 1e-12)
            shape = [-1 if d == axis else 1 for d in range(weight.ndim)]
            w_int = np.clip(np.round(weight / w_scale.reshape(shape)), -self.weight_qmax, self.weight_qmax).astype(np.int8)
            prefix = f"{self.layers[node.name]}.weight"
            new_nodes.append(helper.make_node(
                "DequantizeLinear",
                [self._add_initializer(f"{prefix}/int8", w_int),
                 self._add_initializer(f"{prefix}/scale", w_scale.astype(np.float32)),
                 self._add_initializer(f"{prefix}/zero_point", np.zeros_like(w_int, shape=w_scale.shape))],
                [f"{prefix}/dq"], name=f"{prefix}/DequantizeLinear", axis=axis))
            node.input[1] = f"{prefix}/dq"
            if len(node.input) > 2 and node.input[2] in self.g.initializers:
                bias = numpy_helper.to_array(self.g.initializers[node.input[2]]).astype(np.float64)
                b_scale = x_scale * w_scale
                b_int = np.round(bias / b_scale).astype(np.int32)
                bias_prefix = f"{self.layers[node.name]}.bias"
                new_nodes.append(helper.make_node(
                    "DequantizeLinear",
                    [self._add_initializer(f"{bias_prefix}/int32", b_int),
                     self._add_initializer(f"{bias_prefix}/scale", b_scale.astype(np.float32)),
                     self._add_initializer(f"{bias_prefix}/zero_point", np.zeros_like(b_int))],
                    [f"{bias_prefix}/dq"], name=f"{bias_prefix}/DequantizeLinear", axis=0))
                node.input[2] = f"{bias_prefix}/dq"
        self.g.graph.node.extend(new_nodes)
        self._drop_unused_initializers()

    def _drop_unused_initializers(self) -> None:
        used = {name for node in self.g.graph.node for name in node.input}
        for tensor in list(self.g.graph.initializer):
            if tensor.name not in used:
                self.g.graph.initializer.remove(tensor)

    def rewrite(self) -> onnx.ModelProto:
        self.assign_outputs()
        self.assign_inputs()
        self.insert_activation_qdq()
        self.quantize_layer_parameters()
        sorted_model = _topological(self.g.model)
        onnx.checker.check_model(sorted_model)
        return sorted_model


def _topological(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ArtifactError("int8 export produced a graph with a cycle or a dangling input")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
            pending.remove(node)
    del graph.node[:]
    graph.node.extend(ordered)
    return model


# -- 3. the entry point ------------------------------------------------------------------------

def export_int8_onnx(
    model: nn.Module,
    calibration: PathLike | Mapping[str, Any],
    onnx_path: PathLike,
    input_shape: Sequence[int],
    *,
    reduce_range: bool = True,
) -> Path:
    """Write an int8 (QDQ) ONNX model that ONNX Runtime runs with integer kernels.

    :param model: a model quantized by an nncore quantizer (wrapped), or a plain float model
        (e.g. unwrapped, or pruned and sped up) whose layer names match the calibration keys.
    :param calibration: the calibration config (a dict, or the path written by
        ``export_model(calibration_path=...)``); its tracked ranges are used as they are.
    :param onnx_path: where to write the model (atomically).
    :param input_shape: the input shape, e.g. ``[1, 3, 224, 224]``.
    :param reduce_range: 7-bit weights, which avoids int16 saturation in ONNX Runtime's u8s8
        kernels on CPUs without VNNI (the weights are requantized per channel either way).
    :return: ``onnx_path`` as a :class:`~pathlib.Path`.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}", header="invalid argument")
    calibration = load_calibration(calibration)
    plain, bn_folded = deployable_model(model, input_shape)
    missing = sorted(set(calibration) - {n for n, _ in plain.named_modules()})
    if missing:
        raise ConfigError(f"calibration names layers the model does not have: {', '.join(missing)}", header="invalid argument")
    with tempfile.TemporaryDirectory() as directory:
        float_path, prepared_path = Path(directory, "float.onnx"), Path(directory, "prepared.onnx")
        float_path.write_bytes(onnx_export_bytes(plain, input_shape))
        quant_pre_process(str(float_path), str(prepared_path))
        prepared = onnx.load(str(prepared_path))
    module_names = [name for name, _ in plain.named_modules()]
    int8 = _Int8Rewriter(prepared, calibration, bn_folded, reduce_range, module_names).rewrite()
    return atomic_write(onnx_path, lambda handle: handle.write(int8.SerializeToString()))
