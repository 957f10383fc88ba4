"""What the search pruners (ADMM, NetAdapt, simulated annealing, AutoCompress) share.

* argument checks that raise one :class:`ConfigError` naming every problem;
* the ``base_algo`` pruner, found in the registry, that turns per-layer sparsities into masks;
* :class:`MaskedCopy`: a deep copy of the model wrapped by the base pruner, on which candidate
  sparsities are tried (the user's model is touched only once the search is over);
* :class:`LayerSpace` and :func:`fit_counts`: per-layer sparsities in whole pruning units
  (filters for filter pruners, weights for ``level``) that meet an overall budget in weights;
* :class:`SearchPruner`: the base class, whose ``compress()`` runs the search on the copy and
  then puts the masks found (and the weights the search trained) into the user's model;
* the search history, written as JSON with :func:`nncore.artifacts.atomic_write`.
"""
from __future__ import annotations

import copy
import inspect
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import attrs
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from nncore.artifacts import atomic_write, copy_state_dict
from nncore.compressor import Pruner
from nncore.config.schema import same_value_errors
from nncore.errors import ConfigError, NncoreError, UnknownCompressorError
from nncore.hookspecs import hookimpl
from nncore.registry import get_compressor
from nncore.wrapper import ModuleWrapper

OPTIMIZE_MODES = ("maximize", "minimize")
OVERALL_SPARSITY = {
    "type": "number",
    "exclusiveMinimum": 0,
    "exclusiveMaximum": 1,
    "description": "Overall fraction of the weights of all selected layers to prune.",
}
HISTORY_FILE = "search_history.json"
RESULT_FILE = "search_result.json"


# ------------------------------------------------------------------------------ argument checks
def callable_error(value: Any, what: str) -> list[str]:
    """``[message]`` when ``value`` is not callable (``what`` names the argument and its use)."""
    if callable(value):
        return []
    return [f"{what}: must be a callable, got {'None' if value is None else type(value).__name__}"]


def choice_error(value: Any, what: str, allowed: Sequence[str]) -> list[str]:
    """``[message]`` when ``value`` is not one of ``allowed``."""
    if isinstance(value, str) and value in allowed:
        return []
    return [f"{what}: must be one of {', '.join(map(repr, allowed))}, got {value!r}"]


def number_error(value: Any, what: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False) -> list[str]:
    """``[message]`` when ``value`` is not a number (an int if ``integer``) in the given range."""
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return []
    left = "" if low is None else f"{'>' if low_open else '>='} {low}"
    right = "" if high is None else f"{'<' if high_open else '<='} {high}"
    bounds = " and ".join(part for part in (left, right) if part)
    return [f"{what}: must be {'an int' if integer else 'a number'}{' ' + bounds if bounds else ''}, got {value!r}"]


def raise_argument_errors(errors: list[str], owner: str) -> None:
    """Raise one :class:`ConfigError` listing ``errors`` (nothing when empty)."""
    if errors:
        raise ConfigError(errors, header=f"invalid argument for {owner}")


def resolve_base_algo(base_algo: Any, errors: list[str]) -> type[Pruner] | None:
    """The one-shot pruner class registered as ``base_algo``; appends to ``errors`` if unusable."""
    if not isinstance(base_algo, str):
        errors.append(f"base_algo: must be the registry name of a pruner such as 'l1' or 'level', got {base_algo!r}")
        return None
    try:
        algorithm = get_compressor(base_algo)
    except UnknownCompressorError as exc:
        errors.append(f"base_algo: {exc}")
        return None
    if not issubclass(algorithm, Pruner) or issubclass(algorithm, SearchPruner):
        errors.append(f"base_algo: {base_algo!r} is a {algorithm.kind or 'compressor'} that cannot compute masks "
                      "for given sparsities; use a one-shot pruner such as 'l1', 'l2', 'fpgm' or 'level'")
        return None
    schema = algorithm.config_schema
    if "sparsity" not in schema.get("properties", {}) or set(schema.get("required", ())) - {"sparsity"}:
        errors.append(f"base_algo: {base_algo!r} is not configured by 'sparsity' alone "
                      f"(its keys: {', '.join(sorted(schema.get('properties', {})))}); use a one-shot pruner "
                      "such as 'l1', 'l2', 'fpgm' or 'level'")
        return None
    needs = [
        name for name, parameter in list(inspect.signature(algorithm).parameters.items())[2:]
        if parameter.default is inspect.Parameter.empty
        and parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    ]
    if needs:
        errors.append(f"base_algo: {base_algo!r} needs arguments ({', '.join(needs)}) that a search pruner cannot give it")
        return None
    return algorithm


def base_config_list(names: Iterable[str], sparsity: float = 0.0) -> list[dict[str, Any]]:
    """A config list selecting exactly the layers ``names`` at one sparsity."""
    return [{"op_names": list(names), "sparsity": sparsity}]


# ------------------------------------------------------------------------------ pruning units
@attrs.frozen
class LayerSpace:
    """How one layer can be pruned: in ``units`` units of ``unit_size`` weights each.

    :ivar name: the layer's name in the model.
    :ivar numel: its number of weights (``units * unit_size``).
    :ivar unit_size: weights removed together (one filter for filter pruners, 1 for ``level``).
    :ivar floor: units pruned already (a search may only add to them).
    """

    name: str
    numel: int
    unit_size: int
    floor: int = 0

    @property
    def units(self) -> int:
        """How many units the layer has."""
        return self.numel // self.unit_size

    @property
    def ceiling(self) -> int:
        """The most units that may be pruned (one unit always survives)."""
        return max(self.units - 1, self.floor)

    def sparsity(self, count: int) -> float:
        """The fraction of the layer's weights that ``count`` pruned units are."""
        return count * self.unit_size / self.numel

    def request(self, count: int) -> float:
        """The sparsity to ask the base pruner for so that it prunes exactly ``count`` units
        (midway into the unit, so that ``round()`` and ``int()`` both land on ``count``)."""
        return 0.0 if count == 0 else (count + 0.25) / self.units


def total_weights(spaces: Sequence[LayerSpace]) -> int:
    """The number of weights of all layers."""
    return sum(space.numel for space in spaces)


def pruned_weights(spaces: Sequence[LayerSpace], counts: Mapping[str, int]) -> int:
    """The number of weights ``counts`` (units per layer) prunes."""
    return sum(counts[space.name] * space.unit_size for space in spaces)


def target_weights(sparsity: float, spaces: Sequence[LayerSpace]) -> int:
    """The number of weights an overall ``sparsity`` asks for (rounded up)."""
    return math.ceil(sparsity * total_weights(spaces) - 1e-9)


def fit_counts(spaces: Sequence[LayerSpace], desired: Mapping[str, float], target: int) -> dict[str, int]:
    """Whole units per layer, close to ``desired`` (fractions of each layer), pruning at least
    ``target`` weights in total with the least overshoot a greedy unit-by-unit fix finds:
    start from the rounded desired counts, add units (to the layer most below its desire, as
    long as a unit fits in what is missing, then the smallest unit) and drop units that are
    not needed (from the layer most above its desire).

    :raises NncoreError: the layers cannot lose ``target`` weights (each keeps one unit).
    """
    want = {s.name: desired[s.name] * s.units for s in spaces}
    counts = {s.name: min(max(round(want[s.name]), s.floor), s.ceiling) for s in spaces}
    while pruned_weights(spaces, counts) < target:
        room = [s for s in spaces if counts[s.name] < s.ceiling]
        if not room:
            raise NncoreError(f"cannot prune {target} of {total_weights(spaces)} weights: every layer keeps one unit")
        missing = target - pruned_weights(spaces, counts)
        fitting = [s for s in room if s.unit_size <= missing]
        if fitting:  # the layer most below its desired count among those that do not overshoot
            grow = max(fitting, key=lambda s: (want[s.name] - counts[s.name], -s.unit_size))
        else:  # the last unit: the smallest overshoot
            grow = min(room, key=lambda s: (s.unit_size, counts[s.name] - want[s.name]))
        counts[grow.name] += 1
    while True:
        spare = pruned_weights(spaces, counts) - target
        shrinkable = [s for s in spaces if counts[s.name] > s.floor and s.unit_size <= spare]
        if not shrinkable:
            return counts
        shrink = min(shrinkable, key=lambda s: (want[s.name] - counts[s.name], -s.unit_size))
        counts[shrink.name] -= 1


def is_filter_structured(mask: torch.Tensor) -> bool:
    """Whether ``mask`` prunes whole output channels (rows of ``mask.view(out, -1)``) and some."""
    rows = mask.reshape(mask.shape[0], -1)
    return mask.shape[0] > 1 and bool((rows == rows[:, :1]).all()) and 0 < int((mask == 0).sum()) < mask.numel()


def probe_masks(pruner: Pruner, wrapper: ModuleWrapper, sparsity: float) -> dict[str, torch.Tensor | None] | None:
    """``pruner``'s masks for ``wrapper`` at ``sparsity``, without setting any mask: followers
    (e.g. the BatchNorm a filter pruner masks with its conv) are hidden from it meanwhile."""
    followers = pruner.followers
    pruner.followers = {}
    try:
        return pruner.hook.calc_mask(compressor=pruner, wrapper=wrapper, sparsity=sparsity)
    finally:
        pruner.followers = followers


# ------------------------------------------------------------------------------ the working copy
class MaskedCopy:
    """A deep copy of ``model`` whose layers ``names`` are wrapped by a ``base_algo`` pruner.

    Masks set here stay in effect through optimizer steps (the base pruner is live), so a
    fine-tuner or trainer run on :attr:`model` trains the pruned network.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], algorithm: type[Pruner]):
        self.model = copy.deepcopy(model)
        self.names = list(names)
        self.pruner = algorithm(self.model, base_config_list(self.names))
        self.pruner.compress()

    def state(self) -> dict[str, torch.Tensor]:
        """A copy of the weights and masks, for :meth:`restore`."""
        return copy_state_dict(self.model)

    def restore(self, state: Mapping[str, torch.Tensor]) -> None:
        """Put back weights and masks saved by :meth:`state`."""
        self.model.load_state_dict(state)

    def set_counts(self, spaces: Sequence[LayerSpace], counts: Mapping[str, int]) -> None:
        """Masks pruning ``counts[name]`` units of each layer, chosen by the base pruner."""
        self.pruner.update_masks({s.name: s.request(counts[s.name]) for s in spaces})

    def pruned_counts(self) -> dict[str, int]:
        """Masked weights per layer, as the masks say."""
        return {name: int((self.pruner.wrappers[name].weight_mask == 0).sum()) for name in self.names}

    def layer_spaces(self) -> list[LayerSpace]:
        """Each layer's pruning unit, found by asking the base pruner for a mask at 50%."""
        spaces = []
        for name in self.names:
            wrapper = self.pruner.wrappers[name]
            masks = probe_masks(self.pruner, wrapper, 0.5)
            weight = wrapper.module.weight
            if masks is None or (weight.numel() > 1 and not bool((masks["weight_mask"] == 0).any())):
                raise ConfigError(
                    f"base_algo {type(self.pruner).__name__} prunes nothing of layer {name!r} at sparsity 0.5 "
                    "(does it need statistics from training batches?); use 'l1', 'l2', 'fpgm' or 'level'",
                    header="invalid argument",
                )
            unit = weight[0].numel() if masks is not None and is_filter_structured(masks["weight_mask"]) else 1
            spaces.append(LayerSpace(name=name, numel=weight.numel(), unit_size=unit))
        return spaces

    def release(self) -> None:
        """Stop keeping the copy's masks through optimizer steps (the copy is done with)."""
        self.pruner.unwrap_model()


# ------------------------------------------------------------------------------ progress and history
def progress(total: int | None, description: str, verbose: bool) -> tqdm:
    """A tqdm bar, silent unless ``verbose``."""
    return tqdm(total=total, desc=description, disable=not verbose, leave=False)


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as indented JSON, atomically."""
    text = json.dumps(payload, indent=2, default=float).encode()
    return atomic_write(path, lambda handle: handle.write(text))


def layer_sparsities(spaces: Sequence[LayerSpace], counts: Mapping[str, int]) -> dict[str, float]:
    """``{layer: sparsity}`` for ``counts`` units pruned."""
    return {s.name: s.sparsity(counts[s.name]) for s in spaces}


def overall_sparsity(spaces: Sequence[LayerSpace], counts: Mapping[str, int]) -> float:
    """Pruned weights over all weights of the layers."""
    return pruned_weights(spaces, counts) / total_weights(spaces)


# ------------------------------------------------------------------------------ the base class
class SearchPruner(Pruner):
    """Base of pruners that search per-layer sparsities for one overall ``sparsity``.

    Subclasses implement :meth:`search`, which works on a :class:`MaskedCopy` and returns the
    pruned units per layer; ``compress()`` then loads the copy's weights into the model, wraps
    it, and sets the masks found. ``config_list`` key: ``sparsity``, the overall fraction of the
    weights of all selected layers to prune (the same value in every entry).
    """

    config_schema: ClassVar[dict[str, Any]] = {"properties": {"sparsity": OVERALL_SPARSITY}, "required": ["sparsity"]}

    def __init__(self, model: nn.Module, config_list: Sequence[dict[str, Any]], *, errors: list[str],
                 base_algo: Any, optimize_mode: Any = "maximize", experiment_data_dir: Any = "./",
                 verbose: bool = True, plugins: Iterable[Any] = ()):
        errors += choice_error(optimize_mode, "optimize_mode", OPTIMIZE_MODES)
        if not isinstance(experiment_data_dir, (str, os.PathLike)):
            errors.append(f"experiment_data_dir: must be a path, got {type(experiment_data_dir).__name__}")
        self.base_algorithm = resolve_base_algo(base_algo, errors)
        raise_argument_errors(errors, type(self).__name__)
        self.base_algo = base_algo
        self.optimize_mode = optimize_mode
        self.maximize = optimize_mode == "maximize"
        self.experiment_data_dir = Path(experiment_data_dir)
        self.verbose = verbose
        self.default_op_types = self.base_algorithm.default_op_types
        super().__init__(model, config_list, plugins=plugins)
        try:  # building a pruner does not touch the model; it checks the layers and its own arguments
            self.base_algorithm(model, base_config_list(self.wrapper_names()))
        except ConfigError as exc:
            raise ConfigError(exc.errors, header=f"base_algo {base_algo!r} cannot prune the selected layers") from exc
        self.sparsity: float = self.layer_configs[0]["sparsity"]
        self.history: list[dict[str, Any]] = []
        self.best_counts: dict[str, int] = {}
        self.best_score: float | None = None
        self.spaces: list[LayerSpace] = []
        self.masked_weights: dict[str, int] = {}
        self.algorithm: Pruner | None = None
        self._found_masks: dict[str, tuple[torch.Tensor, torch.Tensor | None, str | None]] = {}

    def unsupported_reason(self, module: nn.Module) -> str | None:  # type: ignore[override]
        algorithm = getattr(self, "base_algorithm", None)
        return (algorithm or Pruner).unsupported_reason(module)

    def wrapper_names(self) -> list[str]:
        """The selected layers, in model order."""
        return [config.name for config in self.layer_configs]

    @hookimpl
    def validate_config(self, config_list: list[dict[str, Any]]) -> list[str]:
        return same_value_errors(
            config_list, "sparsity", f"{type(self).__name__} searches per-layer sparsities for one overall sparsity"
        )

    @hookimpl(trylast=True)
    def calc_mask(self, wrapper: ModuleWrapper, sparsity: float) -> dict[str, torch.Tensor | None] | None:
        if self.algorithm is None:
            return None
        return self.algorithm.hook.calc_mask(compressor=self.algorithm, wrapper=wrapper, sparsity=sparsity)

    def better(self, score: float, than: float | None) -> bool:
        """Whether ``score`` beats ``than`` in the optimize mode (anything beats ``None``)."""
        return than is None or (score > than if self.maximize else score < than)

    def search(self, work: MaskedCopy) -> dict[str, int]:
        """Find the pruned units per layer; leave the chosen weights and masks in ``work``."""
        raise NotImplementedError

    def compress(self) -> nn.Module:
        """Run the search on a copy, then put the weights and masks found into the model."""
        if self.wrappers:
            raise NncoreError(f"{type(self).__name__}: compress() was already called on this compressor")
        work = MaskedCopy(self.bound_model, self.wrapper_names(), self.base_algorithm)
        try:
            self.spaces = work.layer_spaces()
            self.best_counts = self.search(work)
            self.masked_weights = work.pruned_counts()
            self.bound_model.load_state_dict(work.pruner.clean_state_dict())
            self._found_masks = {
                name: (w.weight_mask.clone(), None if w.bias_mask is None else w.bias_mask.clone(), w.config.get("leader"))
                for name, w in work.pruner.all_wrappers().items()
            }
        finally:
            work.release()
        self.algorithm = self.base_algorithm(self.bound_model, base_config_list(self.wrapper_names()))
        model = super().compress()
        self.write_history()
        return model

    def after_wrap(self) -> None:
        self.algorithm.wrappers = self.wrappers
        self.algorithm.followers = self.followers
        self.algorithm.after_wrap()

    def update_masks(self, sparsities: Mapping[str, float] | None = None) -> None:
        """Without ``sparsities``: the masks the search found (or its per-layer sparsities)."""
        if sparsities is None and self._found_masks:
            found, self._found_masks = self._found_masks, {}
            for name, (weight_mask, bias_mask, leader) in found.items():
                target = self.wrappers.get(name) or self.add_follower(name, leader)
                target.set_masks(weight_mask, bias_mask)
            return
        if sparsities is None:
            sparsities = {s.name: s.request(self.best_counts[s.name]) for s in self.spaces}
        super().update_masks(sparsities)

    def final_sparsities(self) -> dict[str, float]:
        """``{layer: sparsity}`` found by the search (empty before ``compress()``)."""
        return layer_sparsities(self.spaces, self.best_counts) if self.best_counts else {}

    def record(self, **entry: Any) -> None:
        """Append one step to the search history."""
        self.history.append({"step": len(self.history), **entry})

    def write_history(self) -> Path:
        """Write the history and the result as JSON into ``experiment_data_dir``."""
        result = {
            "algorithm": self.name,
            "base_algo": self.base_algo,
            "target_sparsity": self.sparsity,
            "overall_sparsity": sum(self.masked_weights.values()) / total_weights(self.spaces),
            "sparsities": self.final_sparsities(),
            "score": self.best_score,
        }
        write_json(self.experiment_data_dir / RESULT_FILE, {
            **result,
            "config_list": [{"sparsity": s, "op_names": [n]} for n, s in self.final_sparsities().items() if s > 0],
        })
        return write_json(self.experiment_data_dir / HISTORY_FILE, {**result, "history": self.history})


def count_evaluator(work: MaskedCopy, spaces: Sequence[LayerSpace], evaluate: Callable[[nn.Module], float],
                    base_state: Mapping[str, torch.Tensor]) -> Callable[[Mapping[str, int]], float]:
    """A function scoring unit counts: restore ``base_state``, set the masks, call ``evaluate``."""

    def score(counts: Mapping[str, int]) -> float:
        work.restore(base_state)
        work.set_counts(spaces, counts)
        return float(evaluate(work.model))

    return score
