"""``ModelSpeedup``: masks in, a smaller model that computes the same function out."""
from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from nncore.artifacts import MaskDict, example_input, read_mask_file
from nncore.errors import SpeedupError
from nncore.speedup.analysis import Analysis, split_inputs
from nncore.speedup.fold import fold_into_bias, folded_counts
from nncore.speedup.masks import apply_masks, read_masks
from nncore.speedup.journal import (Journal, filter_masks, get_attr, has_attr, mask_weights, owner_of,
                                    replace_module, set_attr, use_graph_forward, zero_filters)
from nncore.speedup.tensors import flat_tensors
from nncore.speedup.dryrun import check_shapes
from nncore.speedup.heads import update_head_attributes
from nncore.speedup.norms import update_norm_shapes
from nncore.speedup.persist import new_step, record_step, rewrite_record
from nncore.speedup.rewrite import rewrite_graph
from nncore.speedup.rules import ConvRule, LinearRule
from nncore.speedup.ruletable import extra_rules, find_rule
from nncore.speedup.tying import retie_parameters, tied_parameters
from nncore.speedup.summary import SpeedupSummary

logger = logging.getLogger(__name__)

RELATIVE_TOLERANCE = 1e-4
CONSTANT_REASON = ("masked filters coupled with channels that are read where they are neither zero nor a constant "
                   "the reader folds (a layer that also reads unpruned channels, a channel shuffle, conflicting "
                   "masks)")
NOTHING_STRUCTURAL = ("the masks prune no whole channel (fine-grained masks): nothing can be removed "
                      "structurally; the masks were applied to the weights and the model is unchanged in shape")


CAPTURE_NOTES = {
    "fx": "captured with torch.fx symbolic tracing",
    "dispatch": "captured by recording one forward pass (torch.fx cannot trace this model); the model keeps its "
                "own forward",
}


def _difference(reference: Any, result: Any) -> tuple[float, float]:
    refs, outs = flat_tensors(reference), flat_tensors(result)
    if len(refs) != len(outs) or any(r.shape != o.shape for r, o in zip(refs, outs)):
        return float("inf"), 1.0
    diff = max((float((r - o).abs().max()) for r, o in zip(refs, outs) if r.numel()), default=0.0)
    scale = max((float(r.abs().max()) for r in refs if r.numel()), default=0.0)
    return diff, scale


def _shape_of(module: Any) -> str:
    if isinstance(module, torch.Tensor):
        return str(tuple(module.shape))
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor):
        return str(tuple(weight.shape))
    return type(module).__name__


class ModelSpeedup:
    """Turn masks into a truly smaller model (NNI's API).

    :param model: the model the masks were computed for (it is only changed on success)
    :param dummy_input: a tensor, a tuple of positional inputs, or a dict of keyword inputs
    :param masks_file: a mask file written by ``export_model`` or the mask dict itself
    :param map_location: where to load the mask file's tensors (NNI's fourth argument; masks are
        moved to each parameter's device anyway)
    :param strict: raise :class:`~nncore.errors.SpeedupError` when an op the engine does not
        understand blocks channels the masks pruned, instead of keeping them
    :param verify: also run the masked model and the shrunk one on ``dummy_input`` and raise
        :class:`~nncore.errors.SpeedupError` (model untouched) unless they agree within 1e-4 of
        the output scale. Off by default: it costs two forward passes, and the analysis only
        removes channels it proves to be exact zeros.

    Sliced modules replace the old ones in ``model``; the masks are multiplied into every kept
    weight. When the model's code carries literal sizes that changed (``x.view(n, 512 * 7 * 7)``),
    the model's class is switched to a subclass whose ``forward`` is the rewritten traced graph:
    ``copy.deepcopy`` and ``state_dict`` work, pickling the whole model does not (save the
    ``state_dict``). :attr:`summary` lists what was shrunk and why pruned channels were kept.
    """

    def __init__(self, model: nn.Module, dummy_input: Any, masks_file: str | os.PathLike | MaskDict,
                 map_location: Any = None, *, strict: bool = False, verify: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise SpeedupError(f"ModelSpeedup: model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.dummy_input = dummy_input
        self.masks = read_masks(model, masks_file, map_location)
        self.strict = strict
        self.verify = verify
        self.summary: SpeedupSummary | None = None

    # -- public --------------------------------------------------------------------------------
    def speedup_model(self) -> nn.Module:
        """Shrink the model in place and return it; :attr:`summary` says what happened.

        :raises SpeedupError: in strict mode when an unknown op blocks pruned channels, or when the
            shrunk model does not reproduce the masked model (the model is then left untouched).
        """
        modes = {name: m.training for name, m in self.model.named_modules()}
        journal = Journal()
        try:
            return self._speedup(journal)
        except BaseException:
            journal.rollback()
            raise
        finally:
            for name, module in self.model.named_modules():
                module.training = modes.get(name, module.training)

    def _speedup(self, journal: Journal) -> nn.Module:
        model = self.model
        deferred = {} if self.verify else self._deferrable(model)
        mask_weights(model, self.masks, journal, frozenset(deferred))
        model.eval()
        args, kwargs = split_inputs(self.dummy_input)
        try:
            analysis = Analysis(model, self.dummy_input, self.masks, real_output=self.verify)
        except SpeedupError:
            raise
        except Exception as exc:
            raise SpeedupError(f"speedup could not analyse {type(model).__name__}: "
                               f"{type(exc).__name__}: {exc}") from exc
        capture, decision = analysis.capture, analysis.decision
        blocked = {r: n for r, n in decision.kept_by.items() if r.startswith("unknown op")}
        if self.strict and blocked:
            raise SpeedupError("strict speedup: pruned channels are blocked by an op the engine does not "
                               "understand: " + "; ".join(blocked) + " (register a rule with "
                               "nncore.speedup.register_shrink_rule or use strict=False to keep them)")
        notes = [CAPTURE_NOTES[capture.method]]
        masked_filters, kept_filters = self._count_filters(analysis)
        kept_by = dict(decision.kept_by)
        if kept_filters:
            if not kept_by:
                kept_by[CONSTANT_REASON] = kept_filters
            notes.append(f"{kept_filters} of {masked_filters} masked filters kept (reasons above)")
        if capture.unvisited:
            unvisited = (f"modules {', '.join(capture.unvisited)} never ran on dummy_input"
                         + (f" (in training mode the model failed: {capture.training_error})" if capture.training_error
                            else "") + "; they are not shrunk and may no longer fit their inputs: give a dummy_input "
                         "on which they run (the training input size)")
            notes.append(unvisited)
            warnings.warn(unvisited, UserWarning, stacklevel=3)
        if kept_by:
            warnings.warn(("speedup removed nothing: " if not decision.removed else "speedup kept pruned channels: ")
                          + "; ".join(f"{reason} ({count})" for reason, count in kept_by.items()),
                          UserWarning, stacklevel=3)
        if not decision.removed:
            if not masked_filters and not analysis.requested:
                notes.append(NOTHING_STRUCTURAL)
                warnings.warn(NOTHING_STRUCTURAL, UserWarning, stacklevel=3)
            self._finish_masking(analysis, deferred, {}, journal)
            self.summary = SpeedupSummary(kept_by=kept_by, notes=tuple(notes),
                                          masked_filters=masked_filters, kept_filters=kept_filters)
            logger.info("%s", self.summary)
            return model
        diff = None
        try:
            step = new_step()
            tied = tied_parameters(model)
            shrunk = self._shrink(analysis, journal, step)
            retie_parameters(tied, journal)
            self._finish_masking(analysis, deferred, shrunk, journal)
            step["attributes"] = {**update_head_attributes(analysis, journal),
                                  **update_norm_shapes(analysis.ctx, analysis.decision, journal)}
            rewritten = self._rewrite(analysis, journal, step)
            if self.verify:
                with torch.no_grad():
                    result = model(*args, **kwargs)
            elif capture.method == "dispatch":  # the model's own code must still run: stale sizes fail here
                check_shapes(model, args, kwargs)
        except SpeedupError:
            raise
        except Exception as exc:
            raise SpeedupError(f"speedup failed while shrinking {type(model).__name__} "
                               f"(the model is unchanged): {type(exc).__name__}: {exc}") from exc
        if self.verify and not analysis.requested:
            diff, scale = _difference(capture.output, result)
            if not diff <= RELATIVE_TOLERANCE * scale + 1e-6:
                raise SpeedupError(f"speedup self-check failed: the shrunk model differs from the masked model "
                                   f"by {diff:.3g} (output scale {scale:.3g}); the model is unchanged. Please "
                                   f"report this model; register a rule for the op involved meanwhile")
        record_step(model, step)
        if step["attributes"]:
            notes.append("attributes updated: " + ", ".join(f"{owner}.{name} = {value}" for owner, values in
                                                             step["attributes"].items() for name, value in values.items()))
        self.summary = SpeedupSummary(shrunk=shrunk, kept_by=kept_by, notes=tuple(notes),
                                      rewritten=tuple(rewritten), max_abs_diff=diff,
                                      folded=folded_counts(analysis.ctx, decision),
                                      masked_filters=masked_filters, kept_filters=kept_filters)
        logger.info("%s", self.summary)
        return model

    # -- steps -----------------------------------------------------------------------------------
    def _count_filters(self, analysis: Analysis) -> tuple[int, int]:
        """How many whole filters the masks prune, and how many of them stay."""
        records, decision = analysis.ctx.records, analysis.decision
        total = kept = 0
        for name, zero_rows in analysis.ctx.filter_zero.items():
            slots = records.get((name, "out"), records.get((name, "channels")))
            if slots is None or len(slots) != len(zero_rows):
                continue
            total += int(zero_rows.sum())
            kept += int((zero_rows & ~decision.removed_mask(slots)).sum())
        return total, kept

    def _deferrable(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Pure filter masks of plain convolutions and linear layers: masked after slicing."""
        found = filter_masks(self.masks)
        rules = extra_rules()
        for name in list(found):
            module = model.get_submodule(name)
            parts = name.split(".")
            ancestors = [model.get_submodule(".".join(parts[:i])) for i in range(1, len(parts))]
            plain = type(find_rule(module, rules)) in (ConvRule, LinearRule)
            if not plain or any(find_rule(a, rules) is not None for a in ancestors):
                del found[name]
        return found

    def _finish_masking(self, analysis: Analysis, deferred: dict, shrunk: dict, journal: Journal) -> None:
        records, decision = analysis.ctx.records, analysis.decision
        for name, zero_rows in deferred.items():
            slots = records.get((name, "out"), records.get((name, "channels")))
            kept = None
            if name in shrunk and slots is not None:
                kept = np.nonzero(~decision.removed_mask(slots))[0]
            zero_filters(self.model.get_submodule(name), zero_rows, kept, journal)

    def _shrink(self, analysis: Analysis, journal: Journal, step: dict) -> dict:
        """Slice every module and attribute with a removed index, in place (journaled); the kept
        indices go into ``step`` (see :mod:`nncore.speedup.persist`)."""
        decision, records, model = analysis.decision, analysis.ctx.records, self.model
        by_owner: dict[str, dict[str, np.ndarray]] = {}
        for (owner, key), slots in records.items():
            by_owner.setdefault(owner, {})[key] = slots
        shrunk = {}
        for owner, axes in by_owner.items():
            removed = {key: decision.removed_mask(slots) for key, slots in axes.items()}
            if not any(mask.any() for mask in removed.values()):
                continue
            step["kept"][owner] = {key: np.nonzero(~mask)[0].tolist() for key, mask in removed.items()}
            if owner.startswith("attr:"):
                target = owner[len("attr:"):]
                tensor = get_attr(model, target)
                before = tuple(tensor.shape)
                for d in range(tensor.dim()):
                    mask = removed.get(str(d))
                    if mask is not None and mask.any():
                        keep = torch.as_tensor(np.nonzero(~mask)[0], dtype=torch.long, device=tensor.device)
                        tensor = tensor.index_select(d, keep)
                journal.touch(owner_of(model, target))
                set_attr(model, target, tensor)
                shrunk[target] = (before, tuple(tensor.shape))
                continue
            module = model.get_submodule(owner)
            rule = find_rule(module, analysis.rules)
            before = _shape_of(module)

            def kept(key: str, _removed=removed) -> np.ndarray | None:
                return None if key not in _removed else np.nonzero(~_removed[key])[0]

            journal.touch(module)
            if fold_into_bias(analysis.ctx, owner, module, removed, analysis.masks):
                step["biases"].append(owner)
            new = rule.shrink(module, kept)
            if new is not None:
                journal.touch(owner_of(model, owner))
                replace_module(model, owner, new)
                module = new
            shrunk[owner] = (before, _shape_of(module))
        return shrunk

    def _rewrite(self, analysis: Analysis, journal: Journal, step: dict) -> list[str]:
        """fx captures: patch literal sizes in the graph and make it the model's forward."""
        gm = analysis.capture.graph_module
        if gm is None:
            return []
        rewritten = rewrite_graph(analysis.ctx, analysis.decision, gm)
        nodes = {node.name: node for node in gm.graph.nodes}
        step["rewrites"] = [rewrite_record(nodes[name]) for name in rewritten]
        if rewritten:
            journal.touch(self.model)
            for node in gm.graph.nodes:
                if node.op == "get_attr" and not has_attr(self.model, node.target):
                    set_attr(self.model, node.target, get_attr(gm, node.target))
            use_graph_forward(self.model, type(gm).forward)
        return rewritten


def apply_compression_results(model: nn.Module, masks_file: str | os.PathLike | MaskDict, map_location: Any = None,
                              *, dummy_input: Any = None) -> nn.Module:
    """Apply a mask file to ``model`` (NNI's API and positional order) and really shrink it.

    The masks are checked against ``model``. When an example input is known, the model is then
    sped up: ``ModelSpeedup`` removes the pruned channels, so the model becomes smaller and faster
    and computes what the masked model computes. The input is ``dummy_input`` if given, else the
    one ``export_model`` recorded in the mask file (the pruner's ``dummy_input`` or ``input_shape``;
    see :mod:`nncore.artifacts`), built with the recorded shapes and dtypes on the model's device.
    When none is known, the masks are only multiplied into the weights, as NNI does, with a
    warning that ``dummy_input=`` (keyword) is needed to shrink.

    :param model: the model the masks were computed for; changed in place and returned.
    :param masks_file: a mask file written by ``export_model(mask_path=...)``, or a mask dict.
    :param map_location: where to load the masks (``torch.load``'s ``map_location``; default CPU).
    :param dummy_input: an input of the model (tensor, tuple, or dict of keyword inputs).
    :raises ArtifactError: not a mask file, or masks that do not fit ``model``.
    :raises SpeedupError: the speedup failed with an explicit ``dummy_input`` (the model is left
        untouched); with a recorded input the masks are applied instead, with a warning.
    """
    masks, metadata = read_mask_file(masks_file, map_location)
    read_masks(model, masks)
    example, recorded = dummy_input, False
    if example is None and "dummy_input" in metadata:
        parameter = next(model.parameters(), None)
        example = example_input(metadata["dummy_input"], parameter.device if parameter is not None else "cpu")
        recorded = True
    if example is not None:
        try:
            return ModelSpeedup(model, example, masks).speedup_model()
        except SpeedupError as exc:
            if not recorded:
                raise
            warnings.warn(f"apply_compression_results: the model could not be sped up with the input recorded in "
                          f"the mask file ({exc}); the masks were only multiplied into the weights",
                          UserWarning, stacklevel=2)
    else:
        warnings.warn(
            "apply_compression_results: the mask file records no input and no dummy_input was given, so the masks "
            "were only multiplied into the weights; pass dummy_input=<an example input> (keyword) to remove the "
            "pruned channels (smaller, faster model)",
            UserWarning,
            stacklevel=2,
        )
    apply_masks(model, masks)
    return model
