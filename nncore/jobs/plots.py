"""The PNG plots of ``nncore compress``."""
from __future__ import annotations

from pathlib import Path


def sparsity_plot(path: Path, layer_sparsity_: dict[str, float]) -> None:
    """Bar chart of per-layer sparsity (PNG)."""
    from nncore.utils.sensitivity import pyplot, save_figure

    plt = pyplot()
    figure, axes = plt.subplots(figsize=(max(4, len(layer_sparsity_) * 0.8), 3.5))
    axes.bar(list(layer_sparsity_), list(layer_sparsity_.values()))
    axes.set(ylim=(0, 1), ylabel="sparsity (fraction of weights pruned)", title="per-layer sparsity")
    axes.tick_params(axis="x", labelrotation=45)
    save_figure(figure, str(path))
