"""Dynamic int8: weights quantized offline, activations at run time (ONNX Runtime's
``DynamicQuantizeLinear`` / ``MatMulInteger`` family).

Every ``MatMul`` and ``Gemm`` whose weight is a constant (a Linear layer) becomes, as ONNX
Runtime's ``quantize_dynamic`` writes it::

    x_q, x_scale, x_zero_point = DynamicQuantizeLinear(x)        # one per input tensor, shared
    y = Cast(MatMulInteger(x_q, W_int8, x_zero_point, 0)) * (x_scale * w_scale) [+ bias]

with ``W_int8`` symmetric per output column (7-bit with ``reduce_range``), or with one scale for the
whole weight (``per_channel=False``, ``quantize_dynamic``'s default). ONNX Runtime fuses it
into ``DynamicQuantizeMatMul`` / ``MatMulIntegerToFloat``. Activation-by-activation products
(attention scores) stay float, as in ``quantize_dynamic``.
"""
from __future__ import annotations

from typing import Collection

import numpy as np
import onnx
from onnx import TensorProto, helper

from nncore.speedup.onnx_graph import OnnxGraph, Scopes, symmetric_per_channel, weight_input_axis


def _plain_gemm(node: onnx.NodeProto) -> bool:
    attributes = {a.name: a for a in node.attribute}
    return all(attributes[name].f == 1.0 for name in ("alpha", "beta") if name in attributes)


class DynamicRewriter:
    """Rewrites the weight-constant MatMul/Gemm nodes of an exported float model (see the module
    docstring); with ``only``, just the nodes of those modules."""

    def __init__(self, model: onnx.ModelProto, reduce_range: bool, scopes: Scopes,
                 only: Collection[str] | None = None, per_channel: bool = True):
        self.g = OnnxGraph(model)
        self.per_channel = per_channel
        self.weight_qmax = 63 if reduce_range else 127
        self.scopes = scopes
        self.only = None if only is None else set(only)
        self.quantized_inputs: dict[str, tuple[str, str, str]] = {}
        self.rewritten: list[str] = []

    def selected(self, node: onnx.NodeProto) -> bool:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in self.g.initializers:
            return False
        weight = self.g.initializers[node.input[1]]
        if len(weight.dims) != 2 or weight.data_type != TensorProto.FLOAT or weight_input_axis(node) is None:
            return False
        if node.op_type == "Gemm" and not _plain_gemm(node):
            return False
        return self.only is None or self.scopes.node_module(node) in self.only

    def _dynamic_quantize(self, tensor: str) -> tuple[str, str, str]:
        if tensor not in self.quantized_inputs:
            outputs = (f"{tensor}/quantized", f"{tensor}/scale", f"{tensor}/zero_point")
            self.new_nodes.append(helper.make_node("DynamicQuantizeLinear", [tensor], list(outputs),
                                                   name=f"{tensor}/DynamicQuantizeLinear"))
            self.quantized_inputs[tensor] = outputs
        return self.quantized_inputs[tensor]

    def rewrite(self) -> onnx.ModelProto:
        self.new_nodes: list[onnx.NodeProto] = []
        for node in list(self.g.graph.node):
            if not self.selected(node):
                continue
            weight = self.g.constant(node.input[1])
            if weight_input_axis(node) == 0:  # Gemm with transB: the weight is [out, in]
                weight = weight.T
            if self.per_channel:
                w_int, w_scale = symmetric_per_channel(weight, 1, self.weight_qmax)
            else:  # one channel: the whole weight
                w_int, w_scale = symmetric_per_channel(weight.reshape(1, -1), 0, self.weight_qmax)
                w_int, w_scale = w_int.reshape(weight.shape), w_scale.reshape(())
            name = node.name or node.output[0]
            w_q = self.g.add_initializer(f"{name}/weight_int8", w_int)
            w_s = self.g.add_initializer(f"{name}/weight_scale", w_scale)
            w_z = self.g.add_initializer(f"{name}/weight_zero_point", np.zeros(w_scale.shape, dtype=np.int8))
            x_q, x_s, x_z = self._dynamic_quantize(node.input[0])
            output = node.output[0]
            has_bias = node.op_type == "Gemm" and len(node.input) > 2 and bool(node.input[2])
            product = f"{name}/product" if has_bias else output
            self.new_nodes += [
                helper.make_node("Mul", [x_s, w_s], [f"{name}/scales"], name=f"{name}/scales_mul"),
                helper.make_node("MatMulInteger", [x_q, w_q, x_z, w_z], [f"{name}/int32"], name=f"{name}/MatMulInteger"),
                helper.make_node("Cast", [f"{name}/int32"], [f"{name}/cast"], name=f"{name}/cast", to=TensorProto.FLOAT),
                helper.make_node("Mul", [f"{name}/cast", f"{name}/scales"], [product], name=f"{name}/output_scale_mul"),
            ]
            if has_bias:
                self.new_nodes.append(helper.make_node("Add", [product, node.input[2]], [output], name=f"{name}/bias_add"))
            self.g.graph.node.remove(node)
            self.rewritten.append(name)
        self.g.graph.node.extend(self.new_nodes)
        self.g.drop_unused_initializers()
        self.g.reindex()
        return self.g.sorted_and_checked()
