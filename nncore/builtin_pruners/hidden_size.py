"""HiddenSizePruner: remove hidden channels from the residual stream, ranked by group importance.

A transformer's hidden channel is one coupled group: a column of every embedding, the matching
input column of every projection that reads the stream, the output row of every projection that
writes it, the entry of every norm on it (and position embeddings, class tokens, the head). The
speedup engine's analysis finds these groups; the pruner scores each hidden channel by the
squared L2 (or L1) norm of everything in its group, each member's scores divided by their mean so
that a large embedding table does not outweigh the layers (Torch-Pruning's group importance with
mean normalization), and masks the weight and bias of *every* norm on the stream at the least
important channels. :class:`~nncore.speedup.ModelSpeedup` reads those norm masks as a request to
build the model at the smaller hidden size (see :mod:`nncore.speedup.norms`).
"""
from __future__ import annotations

from typing import Any, ClassVar, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from nncore.compressor import Pruner
from nncore.config import FRACTION
from nncore.errors import ConfigError, NncoreError
from nncore.hookspecs import hookimpl
from nncore.wrapper import ModuleWrapper

CRITERIA = ("l1", "l2")


def is_norm(module: nn.Module) -> bool:
    """A LayerNorm or RMSNorm (any model library's, by class name) with a weight vector."""
    name = type(module).__name__
    weight = getattr(module, "weight", None)
    return (name.endswith("LayerNorm") or name.endswith("RMSNorm") or isinstance(module, nn.LayerNorm)) and \
        isinstance(weight, nn.Parameter) and weight.dim() == 1


def _streams(norm_roots: dict[str, list[int]]) -> list[tuple[list[str], np.ndarray]]:
    """Norms that share hidden channels (class roots) form one stream: (norms, its sorted roots)."""
    streams: list[tuple[list[str], set[int]]] = []
    for owner, found in norm_roots.items():
        mine = set(found)
        overlapping = [s for s in streams if s[1] & mine]
        merged = ([owner] + [n for s in overlapping for n in s[0]], mine.union(*(s[1] for s in overlapping)))
        streams = [s for s in streams if not s[1] & mine] + [merged]
    return [(sorted(norms), np.array(sorted(roots), dtype=np.int64)) for norms, roots in streams]


class HiddenSizePruner(Pruner):
    """Prunes the hidden size of every residual stream whose norms the config selects.

    ``config_list`` keys: ``sparsity`` (fraction of the stream's hidden channels to remove; all
    norms of one stream must agree). ``op_types: ['default']`` selects every LayerNorm/RMSNorm.

    :param model: the model (not modified before ``compress()``)
    :param config_list: which norms (hence streams) to prune, and how much
    :param dummy_input: an input the model accepts (tensor, tuple, or dict of keyword inputs)
    :param criterion: ``"l2"`` (squared L2 norm, default) or ``"l1"``

    >>> pruner = HiddenSizePruner(model, [{"sparsity": 0.25, "op_types": ["default"]}], dummy_input=inputs)
    >>> pruner.compress(); pruner.export_model("model.pth", "mask.pth")
    >>> ModelSpeedup(model, inputs, "mask.pth").speedup_model()   # the model at 3/4 of its hidden size
    """

    name: ClassVar[str] = "hidden_size"
    job_arguments: ClassVar[Mapping[str, str]] = {"dummy_input": "dummy_input"}
    config_schema: ClassVar[dict[str, Any]] = {
        "properties": {"sparsity": {**FRACTION, "description": "Fraction of the stream's hidden channels to remove."}},
        "required": ["sparsity"],
    }

    def __init__(self, model: nn.Module, config_list: Sequence[dict[str, Any]], dummy_input: Any,
                 criterion: str = "l2", *, plugins: Iterable[Any] = ()) -> None:
        if criterion not in CRITERIA:
            raise ConfigError(f"HiddenSizePruner: criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}",
                              header="invalid argument")
        if dummy_input is None:
            raise ConfigError("HiddenSizePruner needs dummy_input to find the residual streams",
                              header="invalid argument")
        self.dummy_input = dummy_input
        self.criterion = criterion
        super().__init__(model, config_list, plugins=plugins)
        self.norm_masks = self._plan()

    @property
    def default_op_types(self) -> tuple[str, ...]:  # the model's norm classes (check_config sees them too)
        return tuple(sorted({type(m).__name__ for m in self.bound_model.modules() if is_norm(m)}))

    @classmethod
    def unsupported_reason(cls, module: nn.Module) -> str | None:
        return None if is_norm(module) else "HiddenSizePruner prunes LayerNorm/RMSNorm layers (the stream's norms)"

    # -- planning ------------------------------------------------------------------------------
    def _plan(self) -> dict[str, torch.Tensor]:
        """Channel masks of every norm on every selected stream."""
        from nncore.speedup.analysis import Analysis

        was_training = self.bound_model.training
        self.bound_model.eval()
        try:
            analysis = Analysis(self.bound_model, self.dummy_input)
        except NncoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the user's model on dummy_input
            raise ConfigError(f"HiddenSizePruner: dummy_input does not run through the model "
                              f"({type(exc).__name__}: {exc})", header="invalid argument") from exc
        finally:
            self.bound_model.train(was_training)
        roots = analysis.decision.roots
        norm_roots: dict[str, list[int]] = {}
        for slots, _, owner in analysis.ctx.classes.requests:
            norm_roots.setdefault(owner, []).extend(roots[slots].tolist())
        for owner, found in norm_roots.items():  # a norm run twice is one norm
            norm_roots[owner] = found[:self.bound_model.get_submodule(owner).weight.numel()]
        sparsity = {config.name: config["sparsity"] for config in self.layer_configs}
        masks = {}
        for norms, stream in _streams(norm_roots):
            chosen = {name: sparsity[name] for name in norms if name in sparsity}
            if not chosen:
                continue
            if len(set(chosen.values())) > 1:
                raise ConfigError(f"HiddenSizePruner: the norms of one residual stream must share one sparsity, got "
                                  + ", ".join(f"{name}: {value}" for name, value in sorted(chosen.items())),
                                  header="invalid config_list")
            importance = self._importance(analysis, stream)
            count = min(int(len(stream) * next(iter(chosen.values()))), len(stream) - 1)
            removed = set(stream[np.argsort(importance, kind="stable")[:count]].tolist())
            for name in norms:
                masks[name] = torch.tensor([0.0 if root in removed else 1.0 for root in norm_roots[name]])
        return masks

    def _importance(self, analysis, stream: np.ndarray) -> np.ndarray:
        """Per hidden channel of ``stream`` (its class roots), the group importance (module docstring)."""
        from nncore.speedup.journal import get_attr
        from nncore.speedup.ruletable import find_rule

        roots = analysis.decision.roots
        index = {int(root): i for i, root in enumerate(stream)}
        total = np.zeros(len(stream))
        for (owner, key), slots in analysis.ctx.records.items():
            member = np.array([index.get(int(root), -1) for root in roots[slots]])
            positions = np.nonzero(member >= 0)[0]
            if not len(positions):
                continue
            if owner.startswith("attr:"):
                params = [(get_attr(self.bound_model, owner[len("attr:"):]), int(key))]
            else:
                module = self.bound_model.get_submodule(owner)
                rule = find_rule(module, analysis.rules)
                params = rule.axis_params(module, key) if rule is not None else []
            scores = np.zeros(len(slots))
            for tensor, dim in params:
                flat = tensor.detach().float().movedim(dim, 0).reshape(tensor.shape[dim], -1)
                scores += (flat.abs() if self.criterion == "l1" else flat.pow(2)).sum(1).cpu().numpy()
            if scores[positions].mean() > 0:
                np.add.at(total, member[positions], scores[positions] / scores[positions].mean())
        return total

    # -- masks ---------------------------------------------------------------------------------
    def after_wrap(self) -> None:
        """Every norm on a selected stream is masked: unselected ones follow as followers."""
        for name in self.norm_masks:
            if name not in self.wrappers:
                leader = next(n for n in self.norm_masks if n in self.wrappers)
                self.add_follower(name, leader).set_masks(*self._masks_of(name))

    def _masks_of(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        module = self.bound_model.get_submodule(name)
        module = module.module if isinstance(module, ModuleWrapper) else module
        keep = self.norm_masks[name].to(dtype=module.weight.dtype, device=module.weight.device)
        return keep, None if getattr(module, "bias", None) is None else keep.clone()

    @hookimpl
    def calc_mask(self, wrapper: ModuleWrapper, sparsity: float) -> dict[str, torch.Tensor | None]:
        if wrapper.name not in self.norm_masks:
            ones = torch.ones_like(wrapper.module.weight)
            return {"weight_mask": ones, "bias_mask": None if wrapper.module.bias is None else ones.clone()}
        weight, bias = self._masks_of(wrapper.name)
        return {"weight_mask": weight, "bias_mask": bias}


@hookimpl
def register_compressors() -> list[type]:
    return [HiddenSizePruner]
