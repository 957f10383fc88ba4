"""One linear pass over the captured graph: the classes and zeros of every tensor."""
from __future__ import annotations

import torch

from nncore.errors import SpeedupError
from nncore.speedup.capture import Capture
from nncore.speedup.constants import track as track_constants
from nncore.speedup.context import Context, fresh_info, unknown_info
from nncore.speedup.functions import call_function
from nncore.speedup.ruletable import call_module


def propagate(capture: Capture, masks: dict, choices: dict,
              extra_rules: dict | None = None, cache: dict | None = None) -> Context:
    """Run the analysis once with the given split choices."""
    values = capture.values
    ctx = Context(capture, values, masks, choices, extra_rules, cache)
    for node in capture.nodes():
        value = values.get(node)
        if node.op == "placeholder":
            info = unknown_info(value)
        elif node.op == "get_attr":
            info = fresh_info(ctx, value) if isinstance(value, torch.Tensor) else None
            if info is not None:
                for d, slots in enumerate(info.slots):
                    ctx.record(f"attr:{node.target}", str(d), slots)
        elif node.op == "call_module":
            info = call_module(ctx, node, value)
        elif node.op in ("call_function", "call_method"):
            info = call_function(ctx, node, value)
        elif node.op == "output":
            ctx.pin_all(ctx.info(node.args[0]), "model output", soft=True)
            info = None
        else:  # pragma: no cover - fx has no other node kinds
            raise SpeedupError(f"unexpected graph node kind {node.op!r}")
        if node.op != "output":
            info = track_constants(ctx, node, value, info)
        ctx.infos[node] = info
    return ctx
