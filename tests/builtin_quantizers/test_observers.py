"""Observers: exact histograms built in one pass, and the range each method chooses."""
from __future__ import annotations

import numpy as np
import torch

from nncore.builtin_quantizers.functional import affine_qparams, fake_quantize
from nncore.builtin_quantizers.observers import MAX_BINS, Observer, weight_absmax


def test_minmax_is_the_smallest_and_largest_value_over_batches():
    observer = Observer("minmax", 8)
    observer.observe(torch.tensor([0.5, -1.0, 2.0]))
    observer.observe(torch.tensor([[3.0, 0.0]]))
    assert observer.quantization_range() == (-1.0, 3.0)


def test_the_histogram_grows_and_coarsens_exactly():
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(5000, generator=generator) * scale + shift for scale, shift in ((1, 0), (10, 5), (300, -50))]
    observer = Observer("percentile", 8)
    for batch in batches:
        observer.observe(batch)
    assert observer.counts.numel() <= MAX_BINS
    # every value counted once, in bin floor(x / width) of the final grid
    index = np.floor(torch.cat(batches).double().numpy() / observer.width).astype(int) - observer.first
    np.testing.assert_array_equal(observer.counts.numpy(), np.bincount(index, minlength=observer.counts.numel()))


def test_percentile_cuts_half_the_rest_on_each_side():
    observer = Observer("percentile", 8, percentile=99.0)
    observer.observe(torch.arange(10000, dtype=torch.float32))
    low, high = observer.quantization_range()
    width = observer.width
    assert abs(low - 50) <= 2 * width and abs(high - 9950) <= 2 * width  # 0.5% below 50, 0.5% above 9950


def real_mse(values: torch.Tensor, low: float, high: float, bits: int) -> float:
    scale, zero_point = affine_qparams(torch.tensor(low), torch.tensor(high), bits)
    return float((fake_quantize(values, scale, zero_point, 0, 2**bits - 1) - values).pow(2).mean())


def test_mse_chooses_the_range_with_the_smallest_quantization_error():
    # 4-bit Laplace(0, 1): the optimal clipping is near 5, while the largest |value| is near 10
    torch.manual_seed(1)
    values = torch.distributions.Laplace(0.0, 1.0).sample((20000,))
    observer = Observer("mse", 4)
    observer.observe(values)
    low, high = observer.quantization_range()
    assert -8 < low < -3 and 3 < high < 8
    chosen = real_mse(values, low, high, 4)
    grid = np.linspace(1, 12, 45)
    assert chosen <= 1.05 * min(real_mse(values, -a, b, 4) for a in grid for b in grid)
    assert chosen < 0.8 * real_mse(values, float(values.min()), float(values.max()), 4)


def test_entropy_keeps_a_uniform_range_and_clips_a_lone_outlier():
    generator = torch.Generator().manual_seed(2)
    uniform = Observer("entropy", 8)
    uniform.observe(torch.rand(50000, generator=generator))
    assert uniform.quantization_range()[1] >= 0.95
    outlier = Observer("entropy", 8)
    outlier.observe(torch.cat([torch.randn(50000, generator=generator), torch.tensor([100.0])]))
    low, high = outlier.quantization_range()
    assert -10 < low < -2 and 2 < high < 10
    relu = Observer("entropy", 8)  # half the values are 0: the spike must not pull the range to 0
    relu.observe(torch.relu(torch.randn(50000, generator=generator)))
    assert 2.5 < relu.quantization_range()[1] <= float(relu.high)


def test_nothing_observed_gives_an_empty_observer():
    observer = Observer("mse", 8)
    observer.observe(torch.zeros(0))
    assert observer.empty and observer.quantization_range() == (0.0, 0.0)


def test_weight_clipping_per_channel():
    weight = torch.randn(2, 256, generator=torch.Generator().manual_seed(3)) * 0.1
    weight[0, 0] = 1.0  # an outlier in channel 0 only
    absmax = weight.abs().amax(dim=1)
    assert torch.equal(weight_absmax(weight, "minmax", 4), absmax)
    clipped = weight_absmax(weight, "mse", 4)
    assert clipped[0] < 0.9

    def error(clip: torch.Tensor) -> torch.Tensor:
        scale = (clip / 7)[:, None]
        return ((torch.clamp(torch.round(weight / scale), -7, 7) * scale - weight) ** 2).sum(dim=1)

    assert torch.all(error(clipped) <= error(absmax))
    assert error(clipped)[0] < 0.9 * error(absmax)[0]
