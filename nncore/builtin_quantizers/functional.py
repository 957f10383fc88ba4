"""Fake-quantization arithmetic shared by the built-in quantizers.

Every function returns a float tensor that holds quantized values (``scale * (q - zero_point)``)
and lets gradients through with a straight-through estimator (STE): the forward pass uses the
rounded value, the backward pass sees the identity (clipped to the representable range where
the paper says so).
"""
from __future__ import annotations

import torch

MIN_SCALE = 1e-12
"""Smallest scale used: an all-zero tensor (a pruned channel) must not divide by zero."""


def integer_range(bits: int, signed: bool) -> tuple[int, int]:
    """``(qmin, qmax)`` of a ``bits``-wide integer: ``[-2^(b-1), 2^(b-1)-1]`` or ``[0, 2^b-1]``."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def ste(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` forward, gradient of ``x`` backward (``value`` must be shaped like ``x``)."""
    return x + (value - x).detach()


def affine_qparams(rmin: torch.Tensor, rmax: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point of unsigned ``bits``-bit affine quantization of ``[rmin, rmax]``.

    As in Jacob et al. (2018): the range is extended to contain 0, so that 0 is exact, and the
    zero point is nudged to an integer in ``[0, 2^bits - 1]``.
    """
    qmin, qmax = integer_range(bits, signed=False)
    rmin = torch.clamp(rmin, max=0.0)
    rmax = torch.clamp(rmax, min=0.0)
    scale = ((rmax - rmin) / (qmax - qmin)).clamp(min=MIN_SCALE)
    zero_point = torch.clamp(torch.round(qmin - rmin / scale), qmin, qmax)
    return scale, zero_point


def symmetric_scale(absmax: torch.Tensor, bits: int) -> torch.Tensor:
    """Scale of signed symmetric ``bits``-bit quantization of ``[-absmax, absmax]`` (zero point 0)."""
    return (absmax / ((1 << (bits - 1)) - 1)).clamp(min=MIN_SCALE)


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """``scale * (clamp(round(x / scale + zero_point), qmin, qmax) - zero_point)``.

    Backward: the clipped STE of Jacob et al. -- gradient 1 where the rounded value is in
    ``[qmin, qmax]``, 0 where it was clamped.
    """
    q = torch.clamp(torch.round(x / scale + zero_point), qmin, qmax)
    value = (q - zero_point) * scale
    low, high = (qmin - 0.5 - zero_point) * scale, (qmax + 0.5 - zero_point) * scale
    clipped = torch.minimum(torch.maximum(x, low), high)
    return ste(clipped, value)


def channel_view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-output-channel ``values`` (shape ``[C]``) to broadcast over ``like`` (``[C, ...]``)."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def tensor_range(x: torch.Tensor, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min, max)`` of ``x``, over the whole tensor (scalars) or per output channel (dim 0)."""
    if per_channel:
        flat = x.detach().reshape(x.shape[0], -1)
        return flat.min(dim=1).values, flat.max(dim=1).values
    detached = x.detach()
    return detached.min(), detached.max()
