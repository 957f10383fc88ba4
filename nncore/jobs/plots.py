"""The PNG plots of ``nncore compress``: weights removed per layer, and the before/after comparison."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

REMOVED_COLOUR, ZERO_COLOUR = "#1f77b4", "#aec7e8"
COLUMN_COLOURS = ("#7f7f7f", "#1f77b4", "#2ca02c")


def sparsity_plot(path: Path, reduction: Mapping[str, Mapping[str, float]], really: bool) -> None:
    """Stacked bars per layer: weights removed by speedup, and weights zero but kept (PNG)."""
    from nncore.utils.sensitivity import pyplot, save_figure

    plt = pyplot()
    names = list(reduction)
    removed = [100 * reduction[n]["removed"] for n in names]
    zero = [100 * reduction[n]["zero"] for n in names]
    figure, axes = plt.subplots(figsize=(max(5.0, 0.9 * len(names) + 1.5), 4.0))
    axes.bar(names, removed, color=REMOVED_COLOUR, label="removed (speedup)")
    if any(value >= 0.5 for value in zero):
        axes.bar(names, zero, bottom=removed, color=ZERO_COLOUR, label="zero, kept in place")
    for index, (gone, kept) in enumerate(zip(removed, zero)):
        label = f"{gone:.0f}%" + (f"\n+{kept:.0f}% zero" if kept >= 0.5 else "")
        axes.text(index, gone + kept + 1.5, label, ha="center", va="bottom", fontsize=8)
    title = "weights removed per layer" if really else "weights zeroed per layer (speedup failed: masks only)"
    axes.set(ylim=(0, 118), ylabel="% of the layer's weights", title=title)
    axes.set_yticks(range(0, 101, 25))
    axes.tick_params(axis="x", labelrotation=45 if len(names) > 6 else 0)
    axes.legend(loc="upper left", fontsize="small", ncols=2, frameon=False)
    save_figure(figure, str(path))


def comparison_plot(path: Path, columns: Sequence[tuple[str, Mapping[str, Any]]], threads: int) -> None:
    """Accuracy, file size and latency (batch of one, median and interquartile range) of each
    model side by side (PNG)."""
    from nncore.utils.sensitivity import pyplot, save_figure

    plt = pyplot()
    names = [name for name, _ in columns]
    colours = [COLUMN_COLOURS[i % len(COLUMN_COLOURS)] for i in range(len(names))]
    panels = (("accuracy", "test accuracy (%)", lambda m: 100 * m["accuracy"], "{:.1f}%"),
              ("size_bytes", "file size (KiB)", lambda m: m["size_bytes"] / 1024, "{:.1f}"),
              ("latency_ms", f"latency (ms), batch 1, {threads} thread{'s' if threads != 1 else ''}",
               lambda m: m["latency_ms"], "{:.3f}"))
    figure, axes_row = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6))
    for axes, (key, label, value_of, fmt) in zip(axes_row, panels):
        values = [value_of(metrics) for _, metrics in columns]
        tops = list(values)
        errors = None
        if key == "latency_ms":  # whiskers: the interquartile range
            low = [m["latency_iqr_ms"][0] for _, m in columns]
            tops = [m["latency_iqr_ms"][1] for _, m in columns]
            errors = [[v - lo for v, lo in zip(values, low)], [hi - v for v, hi in zip(values, tops)]]
            axes.set_xlabel("median; whiskers: interquartile range", fontsize=8)
        axes.bar(names, values, color=colours, yerr=errors, capsize=4 if errors else 0)
        ceiling = max(max(tops), 1e-9)
        for index, (value, top) in enumerate(zip(values, tops)):
            axes.text(index, top + 0.02 * ceiling, fmt.format(value), ha="center", va="bottom", fontsize=8)
        axes.set_title(label, fontsize=10)
        axes.set_ylim(0, ceiling * 1.15)
        axes.tick_params(axis="x", labelsize=8)
    figure.suptitle("before / after compression", fontsize=11)
    figure.tight_layout()
    save_figure(figure, str(path))
