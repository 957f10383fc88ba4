"""SensitivityAnalysis: hand-checkable metrics, the four early-stop modes, CSV, plot, errors."""
from __future__ import annotations

import sys

import pytest
import torch
import torch.nn as nn

from nncore.errors import ConfigError, NncoreError, UnknownCompressorError
from nncore.utils import SensitivityAnalysis
from tests.conftest import assert_untouched, snapshot

SPARSITIES = [0.25, 0.5, 0.75]


class TwoConv(nn.Module):
    """conv1: four 1x1 filters of weight 1, 2, 3, 4; conv2: two filters, L1 norms 4 and 40."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 1, bias=False)
        self.conv2 = nn.Conv2d(4, 2, 1, bias=False)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1))
            self.conv2.weight.copy_(torch.tensor([[1.0] * 4, [10.0] * 4]).view(2, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x)))


def weight_sum(model: nn.Module) -> float:
    """Sum of every weight (the layers may be wrapped): 10 + 44 = 54 unpruned."""
    return float(sum(p.detach().sum() for p in model.parameters()))


def zero_count(model: nn.Module) -> float:
    """How many weights are zero."""
    return float(sum((p == 0).sum() for p in model.parameters()))


# L1 filter pruning removes round(s * filters) filters, keeping one at least:
# conv1 (4 filters): 1 -> 53, 2 -> 51, 3 -> 48; conv2 (2 filters): round(0.5)=0 -> 54, 1 -> 50, 1 -> 50.
FULL_SUMS = {"conv1": {0.25: 53.0, 0.5: 51.0, 0.75: 48.0}, "conv2": {0.25: 54.0, 0.5: 50.0, 0.75: 50.0}}


def analyse(model: nn.Module, metric=weight_sum, **kwargs):
    analysis = SensitivityAnalysis(model, lambda: metric(model), sparsities=SPARSITIES, verbose=False, **kwargs)
    return analysis, analysis.analysis()


def test_metrics_are_measured_one_layer_at_a_time() -> None:
    model = TwoConv()
    analysis, result = analyse(model)
    assert result == FULL_SUMS
    assert analysis.ori_metric == 54.0
    assert analysis.layers_count == 2


def test_model_ends_exactly_as_it_was() -> None:
    model = TwoConv().train()
    before = snapshot(model)
    analyse(model)
    assert_untouched(model, before)
    assert model.training


def test_model_is_restored_when_val_func_raises() -> None:
    model = TwoConv()
    before = snapshot(model)
    calls = []

    def failing() -> float:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return 0.0

    with pytest.raises(RuntimeError, match="boom"):
        SensitivityAnalysis(model, failing, sparsities=SPARSITIES, verbose=False).analysis()
    assert_untouched(model, before)


@pytest.mark.parametrize(
    ("mode", "value", "metric", "expected"),
    [
        # stops once the metric is below 52
        ("minimize", 52.0, weight_sum, {"conv1": {0.25: 53.0, 0.5: 51.0}, "conv2": {0.25: 54.0, 0.5: 50.0}}),
        # stops once the metric is above 52.5: at the first sparsity of both layers
        ("maximize", 52.5, weight_sum, {"conv1": {0.25: 53.0}, "conv2": {0.25: 54.0}}),
        # stops once the metric dropped more than 3.5 below 54, i.e. below 50.5
        ("dropped", 3.5, weight_sum, {"conv1": {0.25: 53.0, 0.5: 51.0, 0.75: 48.0},
                                      "conv2": {0.25: 54.0, 0.5: 50.0}}),
        # zero count from 0: stops once it rose more than 1.5
        ("raised", 1.5, zero_count, {"conv1": {0.25: 1.0, 0.5: 2.0}, "conv2": {0.25: 0.0, 0.5: 4.0}}),
    ],
)
def test_early_stop_modes(mode, value, metric, expected) -> None:
    _, result = analyse(TwoConv(), metric, early_stop_mode=mode, early_stop_value=value)
    assert result == expected


def test_export_writes_csv_with_short_rows_after_early_stop(tmp_path) -> None:
    analysis, _ = analyse(TwoConv(), early_stop_mode="maximize", early_stop_value=52.5)
    path = tmp_path / "sensitivity.csv"
    analysis.export(str(path))
    assert path.read_text().splitlines() == ["layername,0.25,0.5,0.75", "conv1,53.0", "conv2,54.0"]


def test_export_full_rows(tmp_path) -> None:
    analysis, _ = analyse(TwoConv())
    analysis.export(str(tmp_path / "s.csv"))
    assert (tmp_path / "s.csv").read_text().splitlines()[1:] == ["conv1,53.0,51.0,48.0", "conv2,54.0,50.0,50.0"]


def test_specified_layers_val_args_and_already_pruned() -> None:
    model = TwoConv()
    analysis = SensitivityAnalysis(model, lambda scale, offset=0.0: weight_sum(model) * scale + offset,
                                   sparsities=[0.5], verbose=False)
    analysis.update_already_pruned("conv1", 0.5)  # 0.5 of the remaining half: real sparsity 0.75
    result = analysis.analysis(val_args=[2.0], val_kwargs={"offset": 1.0}, specified_layers=["conv1"])
    assert result == {"conv1": {0.5: 48.0 * 2 + 1}}
    assert analysis.ori_metric == 54.0 * 2 + 1


def test_default_sparsities_and_other_pruners() -> None:
    model = TwoConv()
    analysis = SensitivityAnalysis(model, lambda: zero_count(model), prune_type="level", verbose=False)
    assert analysis.sparsities == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    result = analysis.analysis(specified_layers=["conv2"])
    # level pruning zeroes int(s * 8) of conv2's 8 weights (rounded down, as NNI)
    assert result == {"conv2": {s: float(int(s * 8)) for s in analysis.sparsities}}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"early_stop_mode": "fastest", "early_stop_value": 1.0}, "early_stop_mode: 'fastest' is not one of"),
        ({"early_stop_mode": "dropped"}, "needs a number as early_stop_value"),
        ({"sparsities": [0.5, 1.5]}, "sparsities must be a non-empty list of numbers in (0, 1]"),
        ({"sparsities": []}, "sparsities must be a non-empty list"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message) -> None:
    with pytest.raises(ConfigError) as info:
        SensitivityAnalysis(TwoConv(), lambda: 0.0, **kwargs)
    assert message in str(info.value)


def test_unknown_pruner_and_layer() -> None:
    with pytest.raises(UnknownCompressorError):
        SensitivityAnalysis(TwoConv(), lambda: 0.0, prune_type="no-such-pruner")
    analysis = SensitivityAnalysis(TwoConv(), lambda: 0.0, verbose=False)
    with pytest.raises(ConfigError, match="specified_layers: \\['fc'\\] not among the analysed layers"):
        analysis.analysis(specified_layers=["fc"])


def test_progress_bar_shows_and_can_be_silenced(capsys) -> None:
    model = TwoConv()
    SensitivityAnalysis(model, lambda: weight_sum(model), sparsities=[0.5], verbose=True).analysis()
    assert "sensitivity" in capsys.readouterr().err
    SensitivityAnalysis(model, lambda: weight_sum(model), sparsities=[0.5], verbose=False).analysis()
    assert capsys.readouterr().err == ""


def test_plot_writes_png(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    analysis, _ = analyse(TwoConv())
    analysis.plot(str(tmp_path / "s.png"))
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_names_its_metric_and_starts_at_sparsity_zero(tmp_path, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    import nncore.utils.sensitivity as sensitivity

    analysis, _ = analyse(TwoConv())
    drawn = []
    monkeypatch.setattr(sensitivity, "save_figure", lambda figure, path: drawn.append(figure))
    analysis.plot(str(tmp_path / "s.png"), metric_name="weight sum")
    axes = drawn[0].axes[0]
    assert axes.get_ylabel() == "weight sum" and axes.get_xlim()[0] == 0
    curves = {line.get_label(): line for line in axes.get_lines() if line.get_label() in analysis.sensitivities}
    assert set(curves) == {"conv1", "conv2"}
    for name, line in curves.items():
        assert list(line.get_xdata()) == [0.0, *sorted(analysis.sensitivities[name])]
        assert line.get_ydata()[0] == analysis.ori_metric


def test_plot_without_matplotlib_says_how_to_install(tmp_path, monkeypatch) -> None:
    analysis, _ = analyse(TwoConv())
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(NncoreError, match="pip install matplotlib"):
        analysis.plot(str(tmp_path / "s.png"))
    assert not (tmp_path / "s.png").exists()
