"""NNI 1.9 calls run unchanged: positional signatures, mask-file metadata, versioned state dicts."""
from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn as nn

from nncore.artifacts import (
    MASK_METADATA_KEY, check_masks, example_input, input_spec, load_masks, read_mask_file,
)
from nncore.builtin_pruners import (
    ActivationAPoZRankFilterPruner, ActivationMeanRankFilterPruner, ADMMPruner, AGPPruner, AutoCompressPruner,
    FPGMPruner, L1FilterPruner, L2FilterPruner, LevelPruner, LotteryTicketPruner, NetAdaptPruner,
    SimulatedAnnealingPruner, SlimPruner, TaylorFOWeightFilterPruner,
)
from nncore.builtin_quantizers import BNNQuantizer, DoReFaQuantizer, NaiveQuantizer, PtqQuantizer, QAT_Quantizer
from nncore.errors import ArtifactError, ConfigError
from nncore.speedup import ModelSpeedup, apply_compression_results
from nncore.utils import ChannelDependency, GroupDependency, SensitivityAnalysis, fix_mask_conflict
from tests.conftest import assert_untouched, make_tiny_cnn, snapshot

FILTER = ("model", "config_list", "optimizer", "dependency_aware", "dummy_input")
SA = ("evaluator", "optimize_mode", "base_algo", "start_temperature", "stop_temperature", "cool_down_rate",
      "perturbation_magnitude")
NNI_1_9 = {  # positional parameters in NNI 1.9's source (src/sdk/pynni/nni/compression/torch)
    LevelPruner: ("model", "config_list", "optimizer"),
    SlimPruner: ("model", "config_list", "optimizer"),
    L1FilterPruner: FILTER,
    L2FilterPruner: FILTER,
    FPGMPruner: FILTER,
    TaylorFOWeightFilterPruner: ("model", "config_list", "optimizer", "statistics_batch_num", "dependency_aware",
                                 "dummy_input"),
    ActivationAPoZRankFilterPruner: ("model", "config_list", "optimizer", "activation", "statistics_batch_num",
                                     "dependency_aware", "dummy_input"),
    ActivationMeanRankFilterPruner: ("model", "config_list", "optimizer", "activation", "statistics_batch_num",
                                     "dependency_aware", "dummy_input"),
    AGPPruner: ("model", "config_list", "optimizer", "pruning_algorithm"),
    LotteryTicketPruner: ("model", "config_list", "optimizer", "lr_scheduler", "reset_weights"),
    ADMMPruner: ("model", "config_list", "trainer", "num_iterations", "training_epochs", "row", "base_algo"),
    NetAdaptPruner: ("model", "config_list", "short_term_fine_tuner", "evaluator", "optimize_mode", "base_algo",
                     "sparsity_per_iteration", "experiment_data_dir"),
    SimulatedAnnealingPruner: ("model", "config_list") + SA + ("experiment_data_dir",),
    AutoCompressPruner: ("model", "config_list", "trainer", "evaluator", "dummy_input", "num_iterations",
                         "optimize_mode", "base_algo", "start_temperature", "stop_temperature", "cool_down_rate",
                         "perturbation_magnitude", "admm_num_iterations", "admm_training_epochs", "row",
                         "experiment_data_dir"),
    SensitivityAnalysis: ("model", "val_func", "sparsities", "prune_type", "early_stop_mode", "early_stop_value"),
    ChannelDependency: ("model", "dummy_input", "traced_model"),
    GroupDependency: ("model", "dummy_input", "traced_model"),
    fix_mask_conflict: ("masks", "model", "dummy_input", "traced"),
    apply_compression_results: ("model", "masks_file", "map_location"),
    ModelSpeedup: ("model", "dummy_input", "masks_file", "map_location"),
}


def positional(callable_) -> tuple[str, ...]:
    parameters = inspect.signature(callable_).parameters.values()
    return tuple(p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


@pytest.mark.parametrize("callable_", list(NNI_1_9), ids=lambda c: c.__name__)
def test_positional_parameters_are_nni_1_9_and_extras_are_keyword_only(callable_):
    assert positional(callable_) == NNI_1_9[callable_]


@pytest.mark.parametrize("quantizer", [NaiveQuantizer, QAT_Quantizer, DoReFaQuantizer, BNNQuantizer])
def test_quantizers_start_with_nni_1_9_parameters(quantizer):
    assert positional(quantizer)[:3] == ("model", "config_list", "optimizer")


def test_level_and_slim_take_the_optimizer_positionally():
    model = make_tiny_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    level = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["default"]}], optimizer)
    assert level.optimizer is optimizer
    slim = SlimPruner(make_tiny_cnn(), [{"sparsity": 0.5, "op_types": ["BatchNorm2d"]}], optimizer)
    assert slim.optimizer is optimizer


def test_filter_pruners_take_nni_positional_arguments():
    model = make_tiny_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    dummy = torch.randn(1, 1, 6, 6)
    l1 = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], optimizer, True, dummy)
    assert (l1.optimizer, l1.dependency_aware, l1.dummy_input) == (optimizer, True, dummy)
    apoz = ActivationAPoZRankFilterPruner(make_tiny_cnn(), [{"sparsity": 0.5, "op_types": ["Conv2d"]}],
                                          optimizer, "relu6", 3)
    assert (apoz.activation, apoz.statistics_batch_num) == ("relu6", 3)
    taylor = TaylorFOWeightFilterPruner(make_tiny_cnn(), [{"sparsity": 0.5, "op_types": ["Conv2d"]}],
                                        optimizer, 2, True, dummy)
    assert (taylor.statistics_batch_num, taylor.dependency_aware) == (2, True)
    agp = AGPPruner(make_tiny_cnn(), [{"final_sparsity": 0.5, "end_epoch": 2, "op_types": ["Conv2d"]}], optimizer, "l1")
    assert type(agp.algorithm) is L1FilterPruner and agp.algorithm.optimizer is optimizer
    with pytest.raises(TypeError):
        AGPPruner(make_tiny_cnn(), [{"final_sparsity": 0.5, "end_epoch": 2}], optimizer, "l1", {})


@pytest.mark.parametrize("pruner_class", [LevelPruner, L1FilterPruner, ActivationMeanRankFilterPruner])
def test_an_optimizer_that_is_not_one_is_refused_and_the_model_untouched(pruner_class):
    model = make_tiny_cnn()
    before = snapshot(model)
    with pytest.raises(ConfigError, match=f"{pruner_class.__name__}: optimizer must be a torch.optim.Optimizer "
                                          "or None, got bool"):
        pruner_class(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], True)
    assert_untouched(model, before)


# -- mask-file metadata ------------------------------------------------------------------------

def test_input_specs_round_trip_structure_shapes_and_dtypes():
    example = {"input_ids": torch.zeros(2, 5, dtype=torch.long), "mask": torch.ones(2, 5, dtype=torch.bool),
               "pixels": (torch.randn(1, 3, 4, 4, dtype=torch.float64),)}
    spec = input_spec(example)
    assert spec == {"kwargs": {"input_ids": {"shape": [2, 5], "dtype": "int64"},
                               "mask": {"shape": [2, 5], "dtype": "bool"},
                               "pixels": {"args": [{"shape": [1, 3, 4, 4], "dtype": "float64"}]}}}
    rebuilt = example_input(spec)
    assert rebuilt["input_ids"].dtype == torch.long and rebuilt["input_ids"].eq(0).all()
    assert rebuilt["mask"].all() and rebuilt["pixels"][0].shape == (1, 3, 4, 4)
    assert rebuilt["pixels"][0].dtype == torch.float64
    assert input_spec([torch.ones(1), 3]) is None and input_spec(None) is None
    with pytest.raises(ArtifactError, match="not an input description"):
        example_input({"shape": [1, -2]})


def test_export_records_the_dummy_input_and_old_files_still_load(tmp_path):
    model = make_tiny_cnn()
    dummy = torch.randn(1, 1, 6, 6)
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], dummy_input=dummy)
    pruner.compress()
    pruner.export_model(str(tmp_path / "m.pth"), str(tmp_path / "mask.pth"))
    masks, metadata = read_mask_file(tmp_path / "mask.pth")
    assert metadata == {"dummy_input": {"shape": [1, 1, 6, 6], "dtype": "float32"}}
    assert MASK_METADATA_KEY not in load_masks(tmp_path / "mask.pth") and set(masks) == {"conv1", "conv2", "bn1"}
    torch.save(masks, tmp_path / "old.pth")  # a file without metadata (older nncore, NNI)
    assert read_mask_file(tmp_path / "old.pth")[1] == {}
    with pytest.raises(ArtifactError, match="entry '__nncore_metadata__' has no mask tensor"):
        check_masks({**masks, MASK_METADATA_KEY: {}}, "masks")
    with pytest.raises(ArtifactError, match="'__nncore_metadata__' entry must be a dict, got list"):
        read_mask_file({**masks, MASK_METADATA_KEY: [1]})


def test_export_records_input_shape_when_the_pruner_has_no_dummy_input(tmp_path):
    pruner = LevelPruner(make_tiny_cnn(), [{"sparsity": 0.5, "op_types": ["default"]}])
    pruner.compress()
    pruner.export_model(str(tmp_path / "m.pth"), str(tmp_path / "mask.pth"), input_shape=[2, 1, 6, 6])
    assert read_mask_file(tmp_path / "mask.pth")[1] == {"dummy_input": {"shape": [2, 1, 6, 6], "dtype": "float32"}}
    with pytest.raises(ConfigError, match=r"input_shape must be a list of positive ints, got \[1, 0\]"):
        pruner.export_model(str(tmp_path / "n.pth"), str(tmp_path / "mask2.pth"), input_shape=[1, 0])
    assert not (tmp_path / "n.pth").exists()


def test_apply_compression_results_positional_map_location_and_recorded_input(tmp_path):
    model = make_tiny_cnn()
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], None, True, torch.randn(1, 1, 6, 6))
    pruner.compress()
    pruner.export_model(str(tmp_path / "m.pth"), str(tmp_path / "mask.pth"))
    fresh = make_tiny_cnn()
    fresh.load_state_dict(torch.load(tmp_path / "m.pth", weights_only=True))
    assert apply_compression_results(fresh, str(tmp_path / "mask.pth"), "cpu") is fresh
    assert (fresh.conv1.out_channels, fresh.conv2.out_channels) == (2, 4)


# -- state dicts keep module versions --------------------------------------------------------

class VersionedConv(nn.Conv2d):
    """Reads its version back, as torchvision's MNASNet does (and refuses a state dict without it)."""

    _version = 3

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        version = local_metadata.get("version")
        if version != 3:
            raise ValueError(f"version should be set to 3 instead of {version}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)


class VersionedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = VersionedConv(1, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_exported_state_dicts_load_into_modules_that_read_their_version(tmp_path):
    model = VersionedNet()
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_names": ["conv", "fc"]}])
    pruner.compress()
    pruner.export_model(str(tmp_path / "model.pth"))
    state = torch.load(tmp_path / "model.pth", weights_only=True)
    assert state._metadata["conv"]["version"] == 3 and "conv.module" not in state._metadata
    fresh = VersionedNet()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.conv.weight, model.conv.module.weight)


@pytest.mark.parametrize("quantizer", ["qat", "ptq"])
def test_quantizer_state_dicts_load_into_modules_that_read_their_version(tmp_path, quantizer):
    model = VersionedNet()
    config = [{"quant_types": ["weight", "output"], "quant_bits": 8, "op_names": ["conv", "fc"]}]
    batches = [torch.randn(2, 1, 6, 6) for _ in range(2)]
    if quantizer == "qat":
        compressor = QAT_Quantizer(model, config, torch.optim.SGD(model.parameters(), lr=0.1))
    else:
        compressor = PtqQuantizer(model, config, batches)
    compressor.compress()
    model(batches[0])
    compressor.export_model(str(tmp_path / "model.pth"), str(tmp_path / "calibration.pth"))
    state = torch.load(tmp_path / "model.pth", weights_only=True)
    assert state._metadata["conv"]["version"] == 3 and not any(".module" in key for key in state._metadata)
    fresh = VersionedNet()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.conv.weight, state["conv.weight"])


def test_lottery_rewinds_modules_that_read_their_version():
    model = VersionedNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = LotteryTicketPruner(model, [{"sparsity": 0.5, "prune_iterations": 1, "op_names": ["conv"]}], optimizer)
    pruner.compress()
    for _ in pruner.get_prune_iterations():
        pruner.prune_iteration_start()  # rewinds through load_state_dict
    assert int(pruner.wrappers["conv"].weight_mask.eq(0).sum()) == int(0.5 * 36)


def test_load_model_state_dict_takes_the_exported_weights_and_keeps_the_masks(tmp_path):
    model = VersionedNet()
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_names": ["conv", "fc"]}], None)
    pruner.compress()
    pruner.export_model(str(tmp_path / "model.pth"))
    other = VersionedNet()
    other_pruner = LevelPruner(other, [{"sparsity": 0.5, "op_names": ["conv"]}])
    other_pruner.compress()
    other_pruner.load_model_state_dict(torch.load(tmp_path / "model.pth", weights_only=True))
    expected = model.conv.module.weight * other.conv.weight_mask
    assert torch.equal(other.conv.module.weight, expected) and isinstance(other.conv, type(model.conv))
    assert torch.equal(other.fc.weight, model.fc.module.weight)
    incomplete = torch.load(tmp_path / "model.pth", weights_only=True)
    del incomplete["fc.bias"]
    with pytest.raises(RuntimeError, match='Missing key.*"fc.bias"'):
        other_pruner.load_model_state_dict(incomplete)
    assert other.conv is other_pruner.wrappers["conv"]


def test_agp_records_the_dummy_input_of_its_algorithm(tmp_path):
    pruner = AGPPruner(make_tiny_cnn(), [{"final_sparsity": 0.5, "end_epoch": 2, "op_types": ["Conv2d"]}], None, "l1",
                       algorithm_options={"dependency_aware": True, "dummy_input": torch.randn(1, 1, 6, 6)})
    pruner.compress()
    pruner.export_model(str(tmp_path / "m.pth"), str(tmp_path / "mask.pth"))
    assert read_mask_file(tmp_path / "mask.pth")[1] == {"dummy_input": {"shape": [1, 1, 6, 6], "dtype": "float32"}}
