"""Observers: the range ``[low, high]`` a tensor is quantized to, from the values seen in calibration.

An activation observer sees every calibration batch (:meth:`Observer.observe`) and then answers
:meth:`Observer.quantization_range` for affine (unsigned, ``2^bits`` levels) quantization:

* ``minmax``: the smallest and largest value seen;
* ``percentile``: the central ``percentile`` % of the values (``(100 - percentile) / 2`` % cut on
  each side, as ONNX Runtime's percentile calibration does);
* ``mse``: the range whose quantization has the smallest expected squared error (clipping error
  plus rounding error ``scale^2 / 12``), each end searched independently over
  :data:`SHRINK_STEPS` geometrically spaced values between the observed end and 1/1000 of it;
* ``entropy``: the range ``[max(min, -t), min(max, t)]`` whose quantized distribution has the
  smallest KL divergence from the observed one (TensorRT's method, ``2^bits`` levels, each
  candidate seen in at most ``8 * 2^bits`` bins; values in the bin of 0, exact whatever the
  range, left out), ``t`` searched as the ends are for ``mse``.

The last three keep a histogram whose bins lie on a grid anchored at 0: new values outside it
add bins of the same width, and the grid coarsens by 2 (adjacent bins merged, exactly) when it
grows past :data:`MAX_BINS`, so one pass over the data is enough and no value is stored.

Weights (per output channel, symmetric): :func:`weight_absmax` with ``minmax`` or ``mse``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from nncore.builtin_quantizers.functional import MIN_SCALE

OBSERVERS = ("minmax", "percentile", "mse", "entropy")
WEIGHT_OBSERVERS = ("minmax", "mse")
MIN_BINS = 8192
MAX_BINS = 2 * MIN_BINS
SHRINK_STEPS = 200
SHRINK_FACTORS = np.geomspace(1e-3, 1.0, SHRINK_STEPS)
"""Candidate clipping values, as fractions of the observed one."""
CHUNK = 1 << 22
ENTROPY_BINS_PER_LEVEL = 8
"""``entropy``: a candidate range is seen in at most this many bins per quantization level."""


class Observer:
    """Collects one tensor's calibration statistics.

    :param method: one of :data:`OBSERVERS`.
    :param bits: the bits of the quantized tensor.
    :param percentile: for ``percentile``: the share of values (in %, in (50, 100]) kept in range.
    """

    def __init__(self, method: str, bits: int, percentile: float = 99.99):
        self.method = method
        self.bits = bits
        self.percentile = percentile
        self.low = math.inf
        self.high = -math.inf
        self.width = 0.0  # bin width; bins cover [first * width, (first + len(counts)) * width)
        self.first = 0
        self.counts: torch.Tensor | None = None

    @property
    def empty(self) -> bool:
        return self.low > self.high

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Add the values of ``x`` (any shape)."""
        values = x.detach().reshape(-1).float()
        if values.numel() == 0:
            return
        low, high = values.aminmax()
        self.low, self.high = min(self.low, float(low)), max(self.high, float(high))
        if self.method != "minmax":
            self._add_to_histogram(values.cpu())

    def _add_to_histogram(self, values: torch.Tensor) -> None:
        if self.counts is None:
            spread = self.high - self.low or max(abs(self.high), abs(self.low), 1e-8)
            self.width = spread / MIN_BINS
            self.first = math.floor(self.low / self.width)
            self.counts = torch.zeros(0, dtype=torch.float64)
        first, last = math.floor(self.low / self.width), math.floor(self.high / self.width)
        while last - first + 1 > MAX_BINS:  # coarsen: merge bin pairs (2k, 2k + 1) of the grid
            self._coarsen()
            first, last = math.floor(self.low / self.width), math.floor(self.high / self.width)
        first = min(first, self.first)
        last = max(last, self.first + self.counts.numel() - 1)
        grown = torch.zeros(last - first + 1, dtype=torch.float64)
        grown[self.first - first: self.first - first + self.counts.numel()] = self.counts
        self.first, self.counts = first, grown
        for chunk in values.split(CHUNK):  # bins computed in float64, a chunk at a time
            index = torch.floor(chunk.double() / self.width).long().clamp(first, last) - first
            self.counts += torch.bincount(index, minlength=self.counts.numel()).double()

    def _coarsen(self) -> None:
        start = math.floor(self.first / 2)
        padded = torch.zeros(2 * (math.floor((self.first + self.counts.numel() - 1) / 2) - start + 1), dtype=torch.float64)
        padded[self.first - 2 * start: self.first - 2 * start + self.counts.numel()] = self.counts
        self.counts = padded.reshape(-1, 2).sum(dim=1)
        self.first, self.width = start, 2 * self.width

    def quantization_range(self) -> tuple[float, float]:
        """``(low, high)`` to quantize to (``(0, 0)`` if nothing was observed)."""
        if self.empty:
            return 0.0, 0.0
        if self.method == "minmax" or self.high == self.low:
            return self.low, self.high
        edges = (self.first + np.arange(self.counts.numel() + 1)) * self.width
        counts = self.counts.numpy()
        if self.method == "percentile":
            low, high = _percentile_range(counts, edges, self.percentile)
        elif self.method == "mse":
            low, high = _mse_range(counts, edges, self.low, self.high, self.bits)
        else:
            low, high = _entropy_range(counts, edges, self.low, self.high, self.bits)
        return max(low, self.low), min(high, self.high)


def _percentile_range(counts: np.ndarray, edges: np.ndarray, percentile: float) -> tuple[float, float]:
    cdf = np.cumsum(counts) / counts.sum()
    cut = (100.0 - percentile) / 200.0
    left = int(np.searchsorted(cdf, cut, side="right"))
    right = int(np.searchsorted(cdf, 1.0 - cut, side="left"))
    return float(edges[left]), float(edges[min(right + 1, len(edges) - 1)])


def _shrunk_ends(low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidate range ends: each end moved towards 0 (an end at or past 0 stays)."""
    lows = np.unique(low * SHRINK_FACTORS) if low < 0 else np.array([low])
    highs = np.unique(high * SHRINK_FACTORS) if high > 0 else np.array([high])
    return lows, highs


def _mse_range(counts: np.ndarray, edges: np.ndarray, low: float, high: float, bits: int) -> tuple[float, float]:
    """The candidate range with the smallest expected squared error of affine ``bits``-bit
    quantization, values at the bin centers: clipping error outside, ``scale^2 / 12`` inside
    (every candidate at once, from prefix sums of the counts, ``count * c`` and ``count * c^2``)."""
    centers = (edges[:-1] + edges[1:]) / 2
    n, s1, s2 = (np.concatenate([[0.0], np.cumsum(v)]) for v in (counts, counts * centers, counts * centers ** 2))
    lows, highs = _shrunk_ends(low, high)
    below = np.searchsorted(centers, lows, side="left")  # centers[:below] < low
    above = np.searchsorted(centers, highs, side="right")  # centers[above:] > high
    left = s2[below] - 2 * lows * s1[below] + lows ** 2 * n[below]
    right = (s2[-1] - s2[above]) - 2 * highs * (s1[-1] - s1[above]) + highs ** 2 * (n[-1] - n[above])
    inside = n[above][None, :] - n[below][:, None]
    scale = (highs[None, :] - lows[:, None]) / ((1 << bits) - 1)
    errors = left[:, None] + right[None, :] + inside * scale ** 2 / 12.0
    i, j = np.unravel_index(np.argmin(errors), errors.shape)
    return float(lows[i]), float(highs[j])


def _kl_divergence(p: np.ndarray, inside: np.ndarray, levels: int) -> float:
    """KL(p || q): ``p`` is the clipped distribution (outliers added to its end bins), ``q`` the
    values inside the range (``inside``, without the outliers) quantized to ``levels`` equal groups
    of bins, each group's mass spread evenly over its non-empty bins (TensorRT's method)."""
    starts = np.linspace(0, p.size, levels + 1).astype(int)[:-1]
    sizes = np.diff(np.append(starts, p.size))
    nonzero = p > 0
    mass, filled = np.add.reduceat(inside, starts), np.add.reduceat(nonzero.astype(float), starts)
    q = np.repeat(np.divide(mass, filled, out=np.zeros_like(mass), where=filled > 0), sizes) * nonzero
    if q.sum() == 0:
        return math.inf
    p, q = p[nonzero] / p.sum(), q[nonzero] / q.sum()
    if np.any(q == 0):
        return math.inf
    return float(np.sum(p * np.log(p / q)))


def _entropy_range(counts: np.ndarray, edges: np.ndarray, low: float, high: float, bits: int) -> tuple[float, float]:
    levels = 1 << bits
    counts = counts.copy()
    zero_bin = int(np.searchsorted(edges, 0.0, side="right")) - 1
    if 0 <= zero_bin < counts.size:
        counts[zero_bin] = 0  # 0 is exact whatever the range (ReLU outputs: a spike that would dominate)
    best, best_range = math.inf, (low, high)
    for threshold in max(-low, high) * SHRINK_FACTORS[::-1]:
        start = int(np.searchsorted(edges, max(low, -threshold), side="right")) - 1
        end = int(np.searchsorted(edges, min(high, threshold), side="left"))
        if end - start < levels:
            break
        inside = counts[start:end]
        if inside.size > ENTROPY_BINS_PER_LEVEL * levels:  # the same resolution for every candidate
            inside = np.add.reduceat(inside, np.linspace(0, inside.size, ENTROPY_BINS_PER_LEVEL * levels + 1).astype(int)[:-1])
        p = inside.copy()
        p[0] += counts[:start].sum()
        p[-1] += counts[end:].sum()
        divergence = _kl_divergence(p, inside, levels)
        if divergence < best:
            best, best_range = divergence, (float(edges[start]), float(edges[end]))
    return best_range


def weight_absmax(weight: torch.Tensor, method: str, bits: int) -> torch.Tensor:
    """Per-output-channel clipping value of symmetric ``bits``-bit weight quantization:
    ``max |w|`` (``minmax``), or the value that minimizes the squared error of the channel (``mse``)."""
    flat = weight.detach().reshape(weight.shape[0], -1).float()
    absmax = flat.abs().amax(dim=1)
    if method == "minmax":
        return absmax
    qmax = (1 << (bits - 1)) - 1
    factors = torch.linspace(0.01, 1.0, 100)
    best = absmax.clone()
    best_error = torch.full_like(absmax, math.inf)
    for factor in factors:
        clip = (absmax * factor).clamp(min=MIN_SCALE)
        scale = (clip / qmax)[:, None]
        error = ((torch.clamp(torch.round(flat / scale), -qmax, qmax) * scale - flat) ** 2).sum(dim=1)
        better = error < best_error
        best = torch.where(better, clip, best)
        best_error = torch.where(better, error, best_error)
    return best
