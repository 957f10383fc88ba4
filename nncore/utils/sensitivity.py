"""Sensitivity analysis: how a metric changes when one layer at a time is pruned (NNI's API).

>>> def val():                      # reads the model it closes over
...     return accuracy(model, test_loader)
>>> analysis = SensitivityAnalysis(model, val, sparsities=[0.25, 0.5, 0.75], prune_type="l1")
>>> sensitivities = analysis.analysis()      # {"conv1": {0.25: 0.97, 0.5: 0.95, ...}, ...}
>>> analysis.export("sensitivity.csv")

Each layer is pruned alone, in place, by a fresh compressor of type ``prune_type`` (any
registered pruner name), ``val_func`` is called, and the layer's original weights are put back
before the next measurement, so the model ends exactly as it was (weights, buffers, modules,
training mode).
"""
from __future__ import annotations

import csv
import io
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch.nn as nn

from nncore.artifacts import atomic_write, copy_state_dict
from nncore.errors import ConfigError, NncoreError

EARLY_STOP_MODES = ("minimize", "maximize", "dropped", "raised")
DEFAULT_SPARSITIES = tuple(round(0.1 * step, 2) for step in range(1, 10))
_HEADER = "invalid SensitivityAnalysis argument"


def need_to_stop(mode: str | None, value: float | None, original: float, current: float) -> bool:
    """Whether the early-stop condition ``mode`` holds for ``current`` (see :class:`SensitivityAnalysis`)."""
    if mode is None:
        return False
    if mode == "minimize":
        return current < value
    if mode == "maximize":
        return current > value
    if mode == "dropped":
        return current < original - value
    return current > original + value


def _checked_sparsities(sparsities: Iterable[float] | None) -> list[float]:
    if sparsities is None:
        return list(DEFAULT_SPARSITIES)
    values = list(sparsities)
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1]
    if not values or bad:
        raise ConfigError(f"sparsities must be a non-empty list of numbers in (0, 1], got {values!r}", header=_HEADER)
    return sorted({round(float(v), 2) for v in values})


class SensitivityAnalysis:
    """Prune each layer alone at increasing sparsities and record ``val_func``'s metric.

    :param model: the model; ``val_func`` must evaluate this very object.
    :param val_func: returns the metric (accuracy, loss, ...) of the model as it is now; it is
        called with ``val_args`` / ``val_kwargs`` given to :meth:`analysis`.
    :param sparsities: sparsities to test (default 0.1, 0.2, ..., 0.9); sorted and rounded to
        two decimals.
    :param prune_type: registry name of the pruner (``'l1'``, ``'l2'``, ``'fpgm'``, ``'level'``, ...).
        The layers analysed are those the pruner selects by default (convolutions for filter pruners).
    :param early_stop_mode: stop a layer's analysis once the metric, after being recorded,
        ``'minimize'``: fell below ``early_stop_value``; ``'maximize'``: rose above it;
        ``'dropped'``: fell more than ``early_stop_value`` below the unpruned metric;
        ``'raised'``: rose more than ``early_stop_value`` above it. ``None`` tests every sparsity.
    :param early_stop_value: the threshold of ``early_stop_mode``.
    :param verbose: show a progress bar.
    :param pruner_kwargs: extra keyword arguments for the pruner's constructor.
    :raises ConfigError: on a bad argument; :class:`~nncore.UnknownCompressorError` on an
        unknown ``prune_type``.
    """

    def __init__(
        self,
        model: nn.Module,
        val_func: Callable[..., float],
        sparsities: Iterable[float] | None = None,
        prune_type: str = "l1",
        early_stop_mode: str | None = None,
        early_stop_value: float | None = None,
        *,
        verbose: bool = True,
        pruner_kwargs: Mapping[str, Any] | None = None,
    ):
        from nncore.registry import get_compressor

        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}", header=_HEADER)
        if not callable(val_func):
            raise ConfigError(f"val_func must be callable, got {type(val_func).__name__}", header=_HEADER)
        if early_stop_mode is not None and early_stop_mode not in EARLY_STOP_MODES:
            raise ConfigError(
                f"early_stop_mode: {early_stop_mode!r} is not one of {', '.join(EARLY_STOP_MODES)} (or None)",
                header=_HEADER,
            )
        if early_stop_mode is not None and not isinstance(early_stop_value, (int, float)):
            raise ConfigError(f"early_stop_mode {early_stop_mode!r} needs a number as early_stop_value, "
                              f"got {early_stop_value!r}", header=_HEADER)
        self.model = model
        self.val_func = val_func
        self.sparsities = _checked_sparsities(sparsities)
        self.prune_type = prune_type
        self.pruner_class = get_compressor(prune_type)
        if getattr(self.pruner_class, "kind", "") != "pruner":
            raise ConfigError(f"prune_type {prune_type!r} is a {self.pruner_class.kind or 'compressor'}, not a pruner",
                              header=_HEADER)
        self.early_stop_mode = early_stop_mode
        self.early_stop_value = early_stop_value
        self.verbose = verbose
        self.pruner_kwargs = dict(pruner_kwargs or {})
        self.ori_metric: float | None = None
        self.sensitivities: dict[str, dict[float, float]] = {}
        self.ori_state_dict = copy_state_dict(model)
        layers = self.pruner_class.check_config(model, [{"sparsity": 0.0, "op_types": ["default"]}])
        self.target_layer: dict[str, nn.Module] = {c.name: model.get_submodule(c.name) for c in layers}
        self.already_pruned: dict[str, float] = {name: 0.0 for name in self.target_layer}

    @property
    def layers_count(self) -> int:
        """How many layers the analysis covers."""
        return len(self.target_layer)

    def analysis(
        self,
        val_args: Sequence[Any] | None = None,
        val_kwargs: Mapping[str, Any] | None = None,
        specified_layers: Iterable[str] | None = None,
    ) -> dict[str, dict[float, float]]:
        """Measure every (or every specified) layer; returns ``{layer: {sparsity: metric}}``.

        The sparsity keys are the relative sparsities given to the constructor; a layer marked
        with :meth:`update_already_pruned` is pruned to ``already + (1 - already) * sparsity``.

        :raises ConfigError: ``specified_layers`` names a layer the analysis does not cover.
        """
        from tqdm.auto import tqdm

        args, kwargs = list(val_args or ()), dict(val_kwargs or {})
        names = list(self.target_layer)
        if specified_layers is not None:
            wanted = list(specified_layers)
            unknown = [name for name in wanted if name not in self.target_layer]
            if unknown:
                raise ConfigError(f"specified_layers: {unknown!r} not among the analysed layers {names!r}", header=_HEADER)
            names = [name for name in names if name in wanted]
        was_training = self.model.training
        self.ori_metric = self.val_func(*args, **kwargs)
        bar = tqdm(total=len(names) * len(self.sparsities), desc="sensitivity", disable=not self.verbose, leave=False)
        try:
            for name in names:
                self.sensitivities[name] = {}
                for done, sparsity in enumerate(self.sparsities, start=1):
                    metric = self._measure(name, sparsity, args, kwargs)
                    self.sensitivities[name][sparsity] = metric
                    bar.update(1)
                    bar.set_postfix(layer=name, metric=f"{metric:.4g}")
                    if need_to_stop(self.early_stop_mode, self.early_stop_value, self.ori_metric, metric):
                        bar.update(len(self.sparsities) - done)
                        break
        finally:
            bar.close()
            self.model.load_state_dict(self.ori_state_dict)
            self.model.train(was_training)
        return self.sensitivities

    def _measure(self, name: str, sparsity: float, args: list, kwargs: dict) -> float:
        already = self.already_pruned[name]
        real_sparsity = min(1.0, (1.0 - already) * sparsity + already)
        pruner = self.pruner_class(self.model, [{"sparsity": real_sparsity, "op_names": [name]}], **self.pruner_kwargs)
        try:
            pruner.compress()
            return self.val_func(*args, **kwargs)
        finally:
            pruner.unwrap_model()
            self.model.load_state_dict(self.ori_state_dict)

    def export(self, filepath: str) -> None:
        """Write the results as CSV (atomically): a ``layername,<sparsities>`` header, then one
        row per layer with its metrics in sparsity order (shorter rows where it stopped early)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["layername", *(str(s) for s in self.sparsities)])
        for layer, metrics in self.sensitivities.items():
            writer.writerow([layer, *(metrics[s] for s in sorted(metrics))])
        text = buffer.getvalue().encode("utf-8")
        atomic_write(filepath, lambda handle: handle.write(text))

    def plot(self, filepath: str, metric_name: str = "metric") -> None:
        """Draw one metric-vs-sparsity curve per layer into a PNG (needs matplotlib).

        Every curve starts at sparsity 0 with the unpruned metric; ``metric_name`` labels the
        y-axis (e.g. ``'test accuracy'``).
        """
        if not self.sensitivities:
            raise NncoreError("SensitivityAnalysis.plot: call analysis() first")
        start = [(0.0, self.ori_metric)] if self.ori_metric is not None and math.isfinite(self.ori_metric) else []
        series = {layer: start + sorted(metrics.items()) for layer, metrics in self.sensitivities.items()}
        line_plot(filepath, series, xlabel="sparsity of the layer (fraction pruned)", ylabel=metric_name,
                  title=f"sensitivity of each layer to {self.prune_type} pruning", baseline=self.ori_metric)

    def update_already_pruned(self, layername: str, ratio: float) -> None:
        """Record that ``layername`` is already pruned to ``ratio`` (iterative sensitivity pruning)."""
        if layername not in self.already_pruned:
            raise ConfigError(f"update_already_pruned: unknown layer {layername!r}", header=_HEADER)
        self.already_pruned[layername] = ratio

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Replace the weights the analysis starts from (and restores to)."""
        self.model.load_state_dict(state_dict)
        self.ori_state_dict = copy_state_dict(self.model)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend, or a clear error."""
    try:
        import matplotlib
    except ImportError as exc:
        raise NncoreError("plotting needs matplotlib, which is not installed: pip install matplotlib") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, filepath: str) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(figure)
    data = buffer.getvalue()
    atomic_write(filepath, lambda handle: handle.write(data))


def line_plot(filepath: str, series: Mapping[str, Sequence[tuple[float, float]]], *, xlabel: str, ylabel: str,
              title: str, baseline: float | None = None) -> None:
    """One line per entry of ``series`` (``{label: [(x, y), ...]}``), saved as PNG."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label)
    if baseline is not None and math.isfinite(baseline):
        axes.axhline(baseline, color="grey", linestyle="--", label="unpruned")
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axes.set_xlim(left=0)
    axes.legend(fontsize="small")
    save_figure(figure, filepath)
