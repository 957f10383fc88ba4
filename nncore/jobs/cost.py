"""FLOPs and params of a pruned model: exact after speedup, or estimated from the masks."""
from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
import torch.nn as nn

from nncore.errors import NncoreError
from nncore.speedup import ModelSpeedup
from nncore.speedup.masks import apply_masks


def effective_flops_params(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """FLOPs and params of a *masked* model as if the zero channels were removed (an estimate).

    Each convolution / linear layer counts only its output channels with a non-zero weight and its
    input channels that are not identically zero on a seeded random batch shaped like
    ``example_input``; a normalisation layer counts only channels whose weight or bias is
    non-zero; other parameters count whole. Used when speedup is unavailable.
    """
    from nncore.utils import count_flops_params

    live_inputs: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            def hook(module: nn.Module, inputs: tuple, _name: str = name) -> None:
                x = inputs[0]
                channel_dim = x.dim() - 1 if isinstance(module, nn.Linear) else 1
                other = [d for d in range(x.dim()) if d != channel_dim]
                live_inputs[_name] = int((x.abs().amax(dim=other) > 0).sum()) if other else int((x != 0).sum())
            handles.append(module.register_forward_pre_hook(hook))
    try:
        probe = torch.randn((8, *example_input.shape[1:]), generator=torch.Generator().manual_seed(0))
        _, _, results = count_flops_params(model, (probe,), verbose=False)
    finally:
        for handle in handles:
            handle.remove()
    flops = params = 0
    counted = {result["name"]: result for result in results}
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) and getattr(module, "groups", 1) == 1:
            weight = weight.detach()
            out_total, in_total = weight.shape[0], weight.shape[1]
            out_live = int((weight.flatten(1) != 0).any(dim=1).sum())
            in_live = min(live_inputs.get(name, in_total), in_total)
            if name in counted:
                flops += counted.pop(name)["flops"] // 8 * out_live * in_live // max(out_total * in_total, 1)
            params += weight[0, 0].numel() * out_live * in_live + (out_live if bias is not None else 0)
        elif isinstance(weight, torch.Tensor) and weight.dim() == 1 and isinstance(bias, torch.Tensor):
            live = (weight.detach() != 0) | (bias.detach() != 0)  # a masked norm channel has both zero
            params += int(live.sum()) * len(own)
        else:
            params += sum(p.numel() for p in own)
    flops += sum(result["flops"] // 8 for result in counted.values())
    return int(flops), int(params)


def compressed_cost(model: nn.Module, masks: dict[str, dict[str, Any]], example_input: torch.Tensor) -> tuple[int, int, bool]:
    """``(flops, params, exact)`` of ``model`` with ``masks`` once the pruned channels are removed.

    Exact (``True``) through :class:`nncore.speedup.ModelSpeedup` on a copy; when speedup fails, the :func:`effective_flops_params` estimate (``False``). ``model`` is not touched.
    """
    from nncore.utils import count_flops_params

    work = copy.deepcopy(model)
    apply_masks(work, masks)
    shrunk = copy.deepcopy(work)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ModelSpeedup(shrunk, example_input, masks).speedup_model()
    except NncoreError:
        return (*effective_flops_params(work, example_input), False)
    flops, params, _ = count_flops_params(shrunk, (example_input,), verbose=False)
    return flops, params, True


def weight_reduction(masked: nn.Module, compressed: nn.Module, really: bool) -> dict[str, dict[str, float]]:
    """Per layer with a weight: the fraction of its weights ``removed`` (by speedup: ``compressed``
    holds a smaller weight) and the fraction left in place but ``zero``, of the unpruned count.

    ``masked`` is the pruned model before speedup (weights of the original shapes); when speedup
    failed (``really`` false) nothing is removed and the masked zeros are counted.
    """
    after_modules = dict(compressed.named_modules()) if really else {}
    result = {}
    for name, module in masked.named_modules():
        weight = getattr(module, "weight", None)
        if not name or not isinstance(weight, torch.Tensor) or weight.numel() == 0:
            continue
        after = getattr(after_modules.get(name), "weight", None) if really else weight
        if not isinstance(after, torch.Tensor):
            continue
        result[name] = {"removed": round(1 - after.numel() / weight.numel(), 4),
                        "zero": round(int((after == 0).sum()) / weight.numel(), 4)}
    return result
