"""Save and load a sped-up model without pickling code.

``speedup_model()`` records what it did (the indices each module kept, the attributes it changed,
the graph nodes it rewrote) on the model. :func:`save_pruned` writes that record as JSON beside the
state dict; :func:`load_pruned` replays it on a freshly built model of the original architecture,
then loads the weights. Per-layer head counts and hidden sizes that no config can express come
back exactly, and loading never runs code from the file (``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from nncore.artifacts import load_torch, save_torch
from nncore.errors import ArtifactError, NncoreError
from nncore.speedup.fold import add_zero_bias
from nncore.speedup.graph import trace_fx
from nncore.speedup.journal import Journal, get_attr, owner_of, replace_module, set_attr, use_graph_forward
from nncore.speedup.ruletable import builtin_leaf_types, extra_rules, find_rule
from nncore.speedup.tying import retie_parameters, tied_parameters

FORMAT = "nncore.pruned"
VERSION = 1
LOG = "_nncore_shrink_log"


def record_step(model: nn.Module, step: dict) -> None:
    """Append one speedup's record (see :func:`new_step`) to ``model``."""
    model.__dict__.setdefault(LOG, []).append(step)


def new_step() -> dict:
    """An empty record: kept indices per module axis, changed attributes, rewritten graph nodes,
    layers that got a bias (constant channels folded into it, see :mod:`nncore.speedup.fold`)."""
    return {"kept": {}, "attributes": {}, "rewrites": [], "biases": []}


def shrink_log(model: nn.Module) -> list[dict]:
    """The records of every speedup applied to ``model`` (empty if none)."""
    return list(model.__dict__.get(LOG, []))


def save_pruned(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model`` (sped up by :class:`~nncore.speedup.ModelSpeedup`) so that :func:`load_pruned`
    can rebuild it from a fresh instance of its original architecture. Written atomically.

    :raises ArtifactError: ``model`` was not sped up by nncore (save its ``state_dict`` instead).
    """
    steps = shrink_log(model)
    if not steps:
        raise ArtifactError(f"save_pruned: {type(model).__name__} was not sped up by nncore, so there is no shrink "
                            f"to replay; save model.state_dict() instead")
    save_torch({"format": FORMAT, "version": VERSION, "steps": json.dumps(steps),
                "state_dict": model.state_dict()}, path)


def load_pruned(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Replay the shrink recorded in ``path`` on ``model`` (a freshly built model of the original
    architecture), load the weights, and return ``model``.

    :raises ArtifactError: the file is not a pruned-model file, or it does not fit ``model``
        (which is then left unchanged).
    """
    content = load_torch(path, "pruned-model file")
    where = f"pruned-model file {str(path)!r}"
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise ArtifactError(f"{where}: not a file written by nncore.speedup.save_pruned")
    if content.get("version") != VERSION:
        raise ArtifactError(f"{where}: format version {content.get('version')!r}, this nncore reads {VERSION}")
    steps = json.loads(content["steps"])
    journal = Journal()
    try:
        for step in steps:
            replay(model, step, journal)
        model.load_state_dict(content["state_dict"], strict=True)
    except NncoreError:
        journal.rollback()
        raise
    except Exception as exc:
        journal.rollback()
        raise ArtifactError(f"{where} does not fit {type(model).__name__} (build the model the file was "
                            f"pruned from): {type(exc).__name__}: {exc}") from exc
    for step in steps:
        record_step(model, step)
    return model


def replay(model: nn.Module, step: dict, journal: Journal) -> None:
    """Apply one recorded speedup to ``model`` (see :func:`load_pruned`)."""
    rules = extra_rules()
    tied = tied_parameters(model)
    for owner in step.get("biases", []):  # their values come with the state dict
        module = model.get_submodule(owner)
        journal.touch(module)
        add_zero_bias(module)
    for owner, axes in step["kept"].items():
        kept_axes = {key: np.asarray(indices, dtype=np.int64) for key, indices in axes.items()}
        if owner.startswith("attr:"):
            target = owner[len("attr:"):]
            tensor = get_attr(model, target)
            for d in range(tensor.dim()):
                if str(d) in kept_axes:
                    tensor = tensor.index_select(d, torch.as_tensor(kept_axes[str(d)], device=tensor.device))
            journal.touch(owner_of(model, target))
            set_attr(model, target, tensor)
            continue
        module = model.get_submodule(owner)
        rule = find_rule(module, rules)
        if rule is None:
            raise ValueError(f"module {owner!r} ({type(module).__name__}) has no shrink rule here")
        journal.touch(module)
        new = rule.shrink(module, kept_axes.get)
        if new is not None:
            journal.touch(owner_of(model, owner))
            replace_module(model, owner, new)
    retie_parameters(tied, journal)
    for owner, values in step["attributes"].items():
        module = model.get_submodule(owner) if owner else model
        journal.touch(module)
        for name, value in values.items():
            setattr(module, name, value)
    if step["rewrites"]:
        _replay_rewrites(model, step["rewrites"], journal)


def _replay_rewrites(model: nn.Module, rewrites: list[dict], journal: Journal) -> None:
    rules = extra_rules()
    gm = trace_fx(model, tuple(rules) + builtin_leaf_types(), lambda module: find_rule(module, rules) is not None)
    nodes = {node.name: node for node in gm.graph.nodes}
    for change in rewrites:
        node = nodes[change["node"]]
        node.target = getattr(torch, change["target"][len("torch."):]) if change["target"].startswith("torch.") \
            else change["target"]
        node.args = decode(change["args"], nodes)
        node.kwargs = decode(change["kwargs"], nodes)
    gm.recompile()
    journal.touch(model)
    use_graph_forward(model, type(gm).forward)


def rewrite_record(node: fx.Node) -> dict:
    """One rewritten graph node, as JSON-ready data."""
    target = node.target if isinstance(node.target, str) else f"torch.{node.target.__name__}"
    return {"node": node.name, "target": target, "args": encode(node.args), "kwargs": encode(node.kwargs)}


def encode(value: Any) -> Any:
    """Graph-node arguments as JSON-ready data (nodes by name)."""
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, slice):
        return {"slice": [encode(value.start), encode(value.stop), encode(value.step)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, tuple):
        return {"tuple": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {"dict": {k: encode(v) for k, v in value.items()}}
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    raise ValueError(f"cannot record graph argument {value!r}")


def decode(value: Any, nodes: dict[str, fx.Node]) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(value, list):
        return [decode(v, nodes) for v in value]
    if not isinstance(value, dict):
        return value
    if "node" in value:
        return nodes[value["node"]]
    if "slice" in value:
        return slice(*(decode(v, nodes) for v in value["slice"]))
    if "ellipsis" in value:
        return Ellipsis
    if "tuple" in value:
        return tuple(decode(v, nodes) for v in value["tuple"])
    return {k: decode(v, nodes) for k, v in value["dict"].items()}
