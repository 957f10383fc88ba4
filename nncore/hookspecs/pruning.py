"""Pruning hooks, called on a compressor's own plugin manager."""
from __future__ import annotations

from typing import TYPE_CHECKING

from nncore.hookspecs import hookspec

if TYPE_CHECKING:
    import torch

    from nncore.compressor import Compressor
    from nncore.wrapper import ModuleWrapper


@hookspec(firstresult=True)
def calc_mask(
    compressor: Compressor, wrapper: ModuleWrapper, sparsity: float
) -> dict[str, torch.Tensor | None] | None:
    """Compute the masks of one wrapped layer at the given sparsity.

    Stops at first non-None result.

    :param compressor: the pruner asking.
    :param wrapper: the wrapped layer; ``wrapper.module`` is the original module and
        ``wrapper.config`` its resolved :class:`~nncore.config.LayerConfig`.
    :param sparsity: the fraction to prune now (an AGP schedule passes the current step's).
    :return: ``{"weight_mask": Tensor, "bias_mask": Tensor | None}`` (1 keeps, 0 prunes),
        shaped like the weight and bias; or ``None`` to let the next implementation answer.
    """
