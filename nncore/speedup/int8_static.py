"""Static int8: QDQ nodes with the ranges a quantizer calibrated, weights int8 per channel.

The ranges are taken as they are -- no second calibration:

* the input of a calibrated layer (Conv, Gemm, or the MatMul of a Linear on 3-D inputs): the
  layer's ``tracked_*_input`` range;
* the output of a calibrated Conv/Gemm, or of an ``Add``, after the ``Relu`` or ``Clip`` at 0
  (ReLU6) that follows it (the activation is removed: a zero point of 0 and the range's top
  clamp like it): the tracked input range of the calibrated layers that read it (through
  ``MaxPool``/``Flatten``/``Reshape``), else the layer's ``tracked_*_output`` range (pushed
  through a BatchNorm folded at export);
* the output (input) of any other calibrated module -- a Linear exported as ``MatMul`` + ``Add``,
  a ReLU6, a pooling layer -- its tracked range on the tensors its call writes (reads);
* ``MaxPool`` keeps its input's parameters; ``GlobalAveragePool`` and ``AveragePool`` take
  their readers' range.

Activations are uint8 (affine), weights int8 per output channel (symmetric; 7-bit with
``reduce_range`` to avoid the int16 saturation of u8s8 kernels on CPUs without VNNI), biases of
Conv/Gemm int32. A tensor without a known range stays float, and so does its layer.
ONNX Runtime then fuses the pattern into ``QLinearConv``, ``QLinearAdd``, ``QGemm``,
``QLinearMatMul`` / ``MatMulIntegerToFloat``, ...
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import helper

from nncore.speedup.onnx_graph import OnnxGraph, Range, Scopes, module_calls, symmetric_per_channel, weight_input_axis

LAYER_OPS = ("Conv", "Gemm", "MatMul")
RANGE_PRESERVING = ("MaxPool", "Flatten", "Reshape", "Identity", "Squeeze", "Unsqueeze")
AVERAGING = ("GlobalAveragePool", "AveragePool")


def activation_qparams(low: float, high: float) -> tuple[float, int]:
    """uint8 ``(scale, zero point)`` of ``[low, high]`` (extended to contain 0)."""
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


def _tracked(entry: Mapping[str, Any], kind: str) -> Range | None:
    if f"{kind}_bits" not in entry:
        return None
    return float(entry[f"tracked_min_{kind}"]), float(entry[f"tracked_max_{kind}"])


def _clip_bounds(g: OnnxGraph, node: onnx.NodeProto) -> Range | None:
    """``(min, max)`` of a ``Clip`` whose bounds are constants (``None`` otherwise)."""
    bounds = []
    for position, default in ((1, -np.inf), (2, np.inf)):
        name = node.input[position] if len(node.input) > position else ""
        value = g.constant(name) if name else default
        if value is None:
            return None
        bounds.append(float(value))
    return bounds[0], bounds[1]


def calibrated_layers(g: OnnxGraph, scopes: Scopes, calibration: Mapping[str, Any]) -> dict[str, str]:
    """``{node name: calibration key}`` of the Conv/Gemm/MatMul nodes that compute a calibrated
    layer with a constant weight (found from the node's scope)."""
    layers = {}
    for node in g.graph.node:
        if node.op_type not in LAYER_OPS or len(node.input) < 2 or node.input[1] not in g.initializers:
            continue
        if weight_input_axis(node) is None or len(g.initializers[node.input[1]].dims) < 2:
            continue
        key = scopes.node_module(node)
        if key in calibration:
            layers[node.name] = key
    return layers


class QdqRewriter:
    """Inserts the QDQ nodes into an exported float model (see the module docstring)."""

    def __init__(self, model: onnx.ModelProto, calibration: dict[str, dict[str, Any]],
                 bn_folded: dict[str, nn.Module], reduce_range: bool, scopes: Scopes):
        self.g = OnnxGraph(model)
        self.calibration = calibration
        self.bn_folded = bn_folded
        self.weight_qmax = 63 if reduce_range else 127
        self.layers = calibrated_layers(self.g, scopes, calibration)
        # Conv/Gemm layers own their output tensor; every other calibrated module is found by its calls
        self.output_layers = {name for name, key in self.layers.items()
                              if self._node(name).op_type in ("Conv", "Gemm")}
        self.qparams: dict[str, tuple[float, int]] = {}
        self.module_input_ranges: dict[tuple[str, str], Range] = {}  # (tensor, reading node) -> range
        self.module_output_ranges: dict[str, Range] = {}
        owned = {self.layers[name] for name in self.output_layers}
        for name, calls in module_calls(self.g, scopes, set(calibration) - owned).items():
            entry = self.calibration[name]
            for inputs, outputs in calls:
                if _tracked(entry, "input") and len(inputs) == 1:
                    for node, _ in self.g.consumers.get(inputs[0], []):
                        if node.name not in self.layers:
                            self.module_input_ranges[(inputs[0], node.name)] = _tracked(entry, "input")
                if _tracked(entry, "output") and len(outputs) == 1:
                    self.module_output_ranges[outputs[0]] = _tracked(entry, "output")

    def _node(self, name: str) -> onnx.NodeProto:
        return next(node for node in self.g.graph.node if node.name == name)

    def input_range(self, node: onnx.NodeProto) -> Range | None:
        return _tracked(self.calibration.get(self.layers.get(node.name, ""), {}), "input")

    def readers_range(self, tensor: str) -> Range | None:
        """Union of the tracked input ranges of every calibrated layer or module that reads
        ``tensor`` (through range-preserving ops); ``None`` if anything else reads it."""
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

    # -- the passes, in order ----------------------------------------------------------------------

    def assign_outputs(self) -> None:
        """In graph order: outputs of calibrated Conv/Gemm layers and of Adds (a following Relu
        or Clip at 0 fused away), outputs of other calibrated modules, then pools whose input is
        quantized."""
        for node in list(self.g.graph.node):
            if node.name in self.output_layers or node.op_type == "Add":
                self.assign_output(node)
            elif node.output and node.output[0] in self.module_output_ranges and node.output[0] not in self.qparams:
                found = self.readers_range(node.output[0]) or self.module_output_ranges[node.output[0]]
                self.qparams[node.output[0]] = activation_qparams(*found)
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
        if node.output[0] in self.qparams:
            return
        activation = self._fusable_activation(node.output[0])
        target = activation[0].output[0] if activation else node.output[0]
        found = self.readers_range(target) or self.module_output_ranges.get(target)
        if found is None and node.name in self.output_layers:
            key = self.layers[node.name]
            found = _output_range(self.calibration[key], self.bn_folded.get(key))
        if found is None and activation and node.output[0] in self.module_output_ranges:
            found = self.module_output_ranges[node.output[0]]
        if found is None and node.op_type == "Add":
            found = self.sum_range(node)
        if found is None:
            return
        if activation:  # zero point 0 clamps at 0, the range's top clamps the Clip: the node writes the activation's output
            found = (0.0, min(max(found[1], 0.0), activation[1]))
            node.output[0] = target
            self.g.graph.node.remove(activation[0])
            self.g.reindex()
        self.qparams[target] = activation_qparams(*found)

    def assign_pool(self, node: onnx.NodeProto) -> None:
        if not node.input or node.input[0] not in self.qparams or node.output[0] in self.qparams:
            return
        if node.op_type == "MaxPool":
            self.qparams[node.output[0]] = self.qparams[node.input[0]]
        elif node.op_type in AVERAGING:
            found = self.readers_range(node.output[0])
            if found is not None:
                self.qparams[node.output[0]] = activation_qparams(*found)

    def assign_inputs(self) -> None:
        """Inputs of calibrated layers and modules that are still float (e.g. the model input)."""
        for node in list(self.g.graph.node):
            module_input = next((name for name in node.input if (name, node.name) in self.module_input_ranges), None)
            if node.name in self.layers and self.input_range(node) is not None and node.input[0] not in self.qparams:
                found = self.readers_range(node.input[0]) or self.input_range(node)
                self.qparams[node.input[0]] = activation_qparams(*found)
            elif module_input is not None and module_input not in self.qparams:
                found = self.readers_range(module_input) or self.module_input_ranges[(module_input, node.name)]
                self.qparams[module_input] = activation_qparams(*found)
            else:
                self.assign_pool(node)

    def insert_activation_qdq(self) -> None:
        new_nodes = []
        for tensor, (scale, zero_point) in self.qparams.items():
            s = self.g.add_initializer(f"{tensor}/scale", np.array(scale, dtype=np.float32))
            z = self.g.add_initializer(f"{tensor}/zero_point", np.array(zero_point, dtype=np.uint8))
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
            x_scale = float(self.g.constant(x.input[1]))
            axis = weight_input_axis(node)
            w_int, w_scale = symmetric_per_channel(self.g.constant(node.input[1]), axis, self.weight_qmax)
            prefix = f"{self.layers[node.name]}.weight"
            new_nodes.append(helper.make_node(
                "DequantizeLinear",
                [self.g.add_initializer(f"{prefix}/int8", w_int), self.g.add_initializer(f"{prefix}/scale", w_scale),
                 self.g.add_initializer(f"{prefix}/zero_point", np.zeros_like(w_int, shape=w_scale.shape))],
                [f"{prefix}/dq"], name=f"{prefix}/DequantizeLinear", axis=axis))
            node.input[1] = f"{prefix}/dq"
            if len(node.input) > 2 and node.input[2] in self.g.initializers:
                b_scale = x_scale * w_scale.astype(np.float64)
                b_int = np.round(self.g.constant(node.input[2]).astype(np.float64) / b_scale).astype(np.int32)
                bias_prefix = f"{self.layers[node.name]}.bias"
                new_nodes.append(helper.make_node(
                    "DequantizeLinear",
                    [self.g.add_initializer(f"{bias_prefix}/int32", b_int),
                     self.g.add_initializer(f"{bias_prefix}/scale", b_scale.astype(np.float32)),
                     self.g.add_initializer(f"{bias_prefix}/zero_point", np.zeros_like(b_int))],
                    [f"{bias_prefix}/dq"], name=f"{bias_prefix}/DequantizeLinear", axis=0))
                node.input[2] = f"{bias_prefix}/dq"
        self.g.graph.node.extend(new_nodes)
        self.g.drop_unused_initializers()
        self.g.reindex()

    def rewrite(self) -> onnx.ModelProto:
        self.assign_outputs()
        self.assign_inputs()
        self.insert_activation_qdq()
        self.quantize_layer_parameters()
        return self.g.sorted_and_checked()
