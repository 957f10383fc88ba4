"""AMCPruner: the DDPG agent, the FLOPs-budget clipping, the masks, the rebuild, files, bad input."""
from __future__ import annotations

import copy
import json
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from nncore import ConfigError, get_compressor
from nncore.builtin_pruners import AMCPruner
from nncore.builtin_pruners.amc import ChannelPruningEnv, allowed_counts, preserved_count
from nncore.builtin_pruners.amc_agent import DDPG, AgentOptions, ReplayMemory, truncated_normal
from nncore.builtin_pruners.amc_channels import ChannelModel
from nncore.speedup import ModelSpeedup
from nncore.utils import count_flops_params
from tests.builtin_pruners.search_helpers import X, Y, assert_filter_structured, assert_masks_in_effect
from tests.conftest import assert_untouched, make_tiny_cnn, snapshot

LOADER = [(X[:12], Y[:12]), (X[12:], Y[12:])]
SMALL_AGENT = {"hidden1": 16, "hidden2": 16, "bsize": 8}


def evaluator(loader, model: nn.Module) -> float:
    """Accuracy in percent, as NNI's AMC examples return it."""
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    return 100.0 * correct / sum(len(y) for _, y in loader)


class ResidualNet(nn.Module):
    """conv1 and conv2 meet in a residual add; a depthwise conv and a pointwise conv follow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.dw, self.bn3 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.pw, self.bn4 = nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16)
        self.fc1, self.fc2 = nn.Linear(16 * 3 * 3, 12), nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.bn1(self.conv1(x)))
        b = torch.relu(self.bn2(self.conv2(a)) + a)
        c = torch.relu(self.bn3(self.dw(b)))
        d = nn.functional.max_pool2d(torch.relu(self.bn4(self.pw(c))), 2)
        return self.fc2(torch.relu(self.fc1(d.flatten(1))))


def make_residual() -> ResidualNet:
    torch.manual_seed(1)
    model = ResidualNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.train()
        model(X)
    return model.eval()


def amc(model, tmp_path, config=None, **options):
    settings = {"flops_ratio": 0.5, "channel_round": 1, "train_episode": 6, "warmup": 3, "output_dir": str(tmp_path),
                "suffix": "test", "seed": 0, "verbose": False, **SMALL_AGENT, **options}
    return AMCPruner(model, config or [{"op_types": ["Conv2d", "Linear"]}], evaluator, LOADER, **settings)


def sped_up_flops(model: nn.Module, masks) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # speedup must remove every masked channel
        small = ModelSpeedup(copy.deepcopy(model), X[:1], masks).speedup_model()
    return count_flops_params(small, X[:1], verbose=False)[0]


@pytest.fixture(autouse=True)
def one_thread():
    """The agent's networks are tiny: on a busy shared CPU one thread is many times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ the agent
def test_registered_under_amc_and_exported():
    assert get_compressor("amc") is AMCPruner


def test_ddpg_learns_the_best_action_of_a_bandit():
    options = AgentOptions(hidden1=32, hidden2=32, lr_c=1e-2, lr_a=1e-3, warmup=30, bsize=64, rmsize=1000, tau=0.1,
                           init_delta=0.5, delta_decay=0.97)
    agent = DDPG(2, options, seed=0)
    state = torch.ones(2)
    for episode in range(120):
        action = agent.random_action() if episode < options.warmup else agent.select_action(state, episode)
        agent.observe(state, action, 1 - (action - 0.7) ** 2, state, True)
        if episode >= options.warmup:
            for _ in range(4):
                agent.update_policy()
    assert agent.policy(state) == pytest.approx(0.7, abs=0.1)


def test_replay_memory_drops_the_oldest_transition_when_full():
    memory = ReplayMemory(3, states=1)
    for step in range(5):
        memory.append(torch.tensor([float(step)]), step / 10, float(step), torch.tensor([step + 1.0]), step == 4)
    assert len(memory) == 3
    assert sorted(memory.state[:, 0].tolist()) == [2.0, 3.0, 4.0]
    state, action, reward, next_state, not_done = memory.sample(3, torch.Generator().manual_seed(0))
    assert sorted(reward[:, 0].tolist()) == [2.0, 3.0, 4.0]  # enough stored: three distinct transitions
    assert torch.equal(next_state, state + 1) and torch.allclose(action * 10, state)
    assert not_done[state[:, 0] == 4.0].item() == 0.0 and not_done[state[:, 0] == 2.0].item() == 1.0


def test_truncated_normal_stays_within_bounds_and_follows_its_mean():
    generator = torch.Generator().manual_seed(0)
    draws = [truncated_normal(0.9, 0.5, 0.0, 1.0, generator) for _ in range(400)]
    assert min(draws) >= 0.0 and max(draws) <= 1.0
    narrow = [truncated_normal(0.3, 0.01, 0.0, 1.0, generator) for _ in range(200)]
    assert np.mean(narrow) == pytest.approx(0.3, abs=0.005)


# ------------------------------------------------------------------------------ counts and FLOPs
def test_preserved_count_rounds_as_nni():
    assert preserved_count(0.5, 7, 1) == 4  # int(7 * 0.5) = 3 pruned
    assert preserved_count(0.3, 32, 8) == 16  # 32 - int(22.4) = 10 kept, rounded up to 16
    assert preserved_count(0.01, 16, 1) == 1  # at least one channel
    assert preserved_count(0.9, 4, 8) == 4  # never more than all
    assert allowed_counts(20, 8) == [8, 16, 20]


def test_flops_are_hand_computed_per_kept_channel():
    channels = ChannelModel(make_tiny_cnn(), ["conv1", "conv2", "fc"], X[:1])
    assert [g.members for g in channels.groups] == [("conv1",), ("conv2",)]  # fc's outputs are the model's
    assert channels.original_flops == 36 * 4 * 9 + 36 * 8 * 4 * 9 + 8 * 3
    removed = channels.removed({0: 2, 1: 4})
    assert channels.flops(removed) == 36 * 2 * 9 + 36 * 4 * 2 * 9 + 4 * 3


def test_clipping_meets_the_budget_as_count_flops_params_measures_it():
    model = make_residual()
    channels = ChannelModel(model, ["conv1", "conv2", "dw", "pw", "fc1", "fc2"], X[:1])
    dense = count_flops_params(model, X[:1], verbose=False)[0]
    env = ChannelPruningEnv(channels, flops_ratio=0.4, lbound=0.2, rbound=1.0, channel_round=1)
    rng = random.Random(0)
    for trial in range(6):
        env.reset()
        done = False
        while not done:
            _, done = env.step(1.0 if trial == 0 else rng.random())
        removed = channels.removed(env.kept)
        predicted = channels.flops(removed)
        assert predicted <= 0.4 * dense
        assert sped_up_flops(model, channels.masks(removed)) == predicted
    env.reset()  # asking for everything: each group takes the most the budget leaves it (later ones at lbound)
    for index, group in enumerate(env.groups):
        env.step(1.0)
        count = env.kept[index]
        later = {i: env.min_counts[i] for i in range(index + 1, len(env.groups))}
        assert channels.flops(channels.removed({**env.kept, **later})) <= 0.4 * dense
        if count < group.channels:
            assert channels.flops(channels.removed({**env.kept, index: count + 1, **later})) > 0.4 * dense
    assert any(env.kept[i] < g.channels for i, g in enumerate(env.groups))


def test_lbound_is_every_layers_minimum():
    channels = ChannelModel(make_residual(), ["conv1", "conv2", "pw", "fc1"], X[:1])
    env = ChannelPruningEnv(channels, flops_ratio=0.9, lbound=0.5, rbound=1.0, channel_round=1)
    env.reset()
    while len(env.kept) < len(env.groups):
        env.step(0.0)
    assert [env.kept[i] for i in range(len(env.groups))] == [4, 8, 6]  # half of 8, 16 and 12
    assert env.strategy == [0.5, 0.5, 0.5]


# ------------------------------------------------------------------------------ the rebuild
def test_least_squares_rebuild_is_exact_when_the_pruned_channel_is_a_combination_of_kept_ones():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight[2] = model[0].weight[0] + 2 * model[0].weight[1]  # hidden 2 = hidden 0 + 2 * hidden 1
    channels = ChannelModel(model, ["0"], X.flatten(1)[:, :4])
    inputs = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    channels.calibrate([inputs], points_per_image=1, generator=torch.Generator().manual_seed(0))
    removed = np.zeros(channels.root_count, dtype=bool)
    removed[channels.groups[0].roots[2]] = True
    channels.apply(removed)
    rebuilt = channels.model
    assert torch.equal(rebuilt[0].weight[2], torch.zeros(4))
    assert torch.allclose(rebuilt(inputs), model(inputs), atol=1e-5)
    expected = model[1].weight[:, :2] + torch.outer(model[1].weight[:, 2], torch.tensor([1.0, 2.0]))
    assert torch.allclose(rebuilt[1].weight[:, :2], expected, atol=1e-5)
    assert torch.equal(rebuilt[1].weight[:, 2], torch.zeros(2))


# ------------------------------------------------------------------------------ end to end
def test_search_end_to_end_masks_the_chosen_channels_within_the_budget(tmp_path):
    model = make_residual()
    dense = count_flops_params(model, X[:1], verbose=False)[0]
    pruner = amc(model, tmp_path, flops_ratio=0.5)
    assert pruner.compress() is model
    kept = pruner.final_channels()
    assert set(kept) == {"conv1", "conv2", "pw", "fc1"}
    assert kept["conv1"] == kept["conv2"]  # coupled by the residual add
    for name, (count, total) in kept.items():
        mask = pruner.wrappers[name].weight_mask
        assert_filter_structured(mask)
        assert int(mask.flatten(1)[:, 0].sum()) == count
        assert pruner.final_sparsities()[name] == 1 - count / total
    channel_masks = {name: w.weight_mask.flatten(1)[:, 0] for name, w in pruner.wrappers.items()}
    assert torch.equal(channel_masks["conv1"], channel_masks["conv2"])
    for follower in ("bn1", "bn2", "bn3"):  # the BatchNorms and the depthwise conv carry the same channels
        assert torch.equal(pruner.followers[follower].weight_mask, channel_masks["conv1"])
    assert torch.equal(channel_masks["dw"], channel_masks["conv1"])
    assert torch.equal(pruner.followers["bn4"].weight_mask, channel_masks["pw"])
    assert pruner.best_strategy == [kept[g.members[0]][0] / kept[g.members[0]][1] for g in pruner.env.groups]
    assert_masks_in_effect(pruner)
    assert evaluator(LOADER, model) == pruner.best["accuracy"]  # the best episode is what the model got
    masks = pruner.masks()
    flops = sped_up_flops(pruner.unwrap_model(), masks)
    assert flops == pruner.best["flops"] <= 0.5 * dense


def test_history_result_and_best_files(tmp_path):
    pruner = amc(make_tiny_cnn(), tmp_path, train_episode=5, warmup=2, suffix=None, model_type="tiny", dataset="digits")
    pruner.compress()
    assert pruner.output_dir == tmp_path / "tiny_digits_r0.5_search-run1"
    history = json.loads((pruner.output_dir / "search_history.json").read_text())
    assert [e["episode"] for e in history["history"]] == [0, 1, 2, 3, 4]
    assert [e["random"] for e in history["history"]] == [True, True, False, False, False]
    best = max(history["history"], key=lambda e: e["reward"])
    assert all(e["flops_ratio"] <= 0.5 for e in history["history"])
    result = json.loads((pruner.output_dir / "search_result.json").read_text())
    assert result["accuracy"] == best["accuracy"] and result["reward"] == pytest.approx(best["accuracy"] / 100)
    assert result["channels"] == {name: list(counts) for name, counts in pruner.final_channels().items()}
    best_masks = torch.load(pruner.output_dir / "best_mask.pth", weights_only=True)
    best_state = torch.load(pruner.output_dir / "best_model.pth", weights_only=True)
    assert torch.equal(best_masks["conv2"]["weight"], pruner.wrappers["conv2"].weight_mask)
    assert all(torch.equal(best_state[k], v) for k, v in pruner.clean_state_dict().items())
    assert set(torch.load(pruner.output_dir / "agent.pth", weights_only=True)) == {"actor", "critic"}
    again = amc(make_tiny_cnn(), tmp_path, suffix=None, model_type="tiny", dataset="digits")
    assert again.output_dir.name == "tiny_digits_r0.5_search-run2"


def test_same_seed_same_search(tmp_path):
    first = amc(make_tiny_cnn(), tmp_path / "a", train_episode=5, warmup=2)
    second = amc(make_tiny_cnn(), tmp_path / "b", train_episode=5, warmup=2)
    first.compress()
    second.compress()
    assert [e["strategy"] for e in first.history] == [e["strategy"] for e in second.history]


def test_progress_bar_only_when_verbose(tmp_path, capsys):
    amc(make_tiny_cnn(), tmp_path / "quiet", train_episode=2, warmup=1).compress()
    assert capsys.readouterr().err == ""
    amc(make_tiny_cnn(), tmp_path / "loud", train_episode=2, warmup=1, verbose=True).compress()
    assert "AMC episodes" in capsys.readouterr().err


def test_a_residual_group_with_a_layer_not_selected_is_left_alone(tmp_path):
    channels = ChannelModel(make_residual(), ["conv1", "pw", "fc1"], X[:1])  # conv2 not selected
    assert [g.members for g in channels.groups] == [("pw",), ("fc1",)]


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("option, value", [
    ("flops_ratio", 0), ("flops_ratio", 1.5), ("lbound", 0), ("rbound", 2), ("reward", "speed_reward"),
    ("channel_round", 0), ("n_calibration_batches", 0), ("n_points_per_layer", 1.5), ("warmup", -1),
    ("train_episode", 0), ("bsize", 0), ("rmsize", 0), ("hidden1", 0), ("lr_a", 0), ("lr_c", -1),
    ("discount", 1.5), ("tau", 0), ("init_delta", 0), ("delta_decay", 1.5), ("window_length", 2),
    ("seed", "zero"), ("output_dir", 3), ("suffix", 3), ("model_type", ""), ("debug", "yes"),
])
def test_bad_arguments_raise_config_error_naming_them(tmp_path, option, value):
    model = make_tiny_cnn()
    before = snapshot(model)
    with pytest.raises(ConfigError, match=option):
        amc(model, tmp_path, **{option: value})
    assert_untouched(model, before)
    assert not any(tmp_path.iterdir())


def test_lbound_above_rbound_and_a_budget_below_lbound_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="lbound: must not exceed rbound 0.5"):
        amc(make_tiny_cnn(), tmp_path, lbound=0.6, rbound=0.5)
    with pytest.raises(ConfigError, match="flops_ratio: 0.1 cannot be met"):
        amc(make_tiny_cnn(), tmp_path, flops_ratio=0.1, lbound=0.5)


@pytest.mark.parametrize("evaluator_, loader, message", [
    (None, LOADER, "evaluator"),
    (evaluator, 5, "val_loader: must be an iterable"),
    (evaluator, [], "val_loader: it yields no batch"),
    (evaluator, [(torch.zeros(2, 3, 6, 6), Y[:2])], "val_loader: the model cannot be analysed"),
])
def test_bad_evaluator_or_loader_is_refused(tmp_path, evaluator_, loader, message):
    model = make_tiny_cnn()
    before = snapshot(model)
    with pytest.raises(ConfigError, match=message):
        AMCPruner(model, [{"op_types": ["Conv2d"]}], evaluator_, loader, output_dir=str(tmp_path), verbose=False)
    assert_untouched(model, before)


def test_nothing_prunable_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no selected layer has output channels AMC can remove"):
        amc(make_tiny_cnn(), tmp_path, config=[{"op_names": ["fc"]}])


def test_the_model_is_untouched_when_the_evaluator_fails(tmp_path):
    model = make_tiny_cnn()
    before = snapshot(model)
    calls = []

    def failing(loader, candidate):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("evaluation failed")
        return evaluator(loader, candidate)

    pruner = AMCPruner(model, [{"op_types": ["Conv2d", "Linear"]}], failing, LOADER, flops_ratio=0.5, channel_round=1,
                       train_episode=4, warmup=2, output_dir=str(tmp_path), seed=0, verbose=False, **SMALL_AGENT)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        pruner.compress()
    assert_untouched(model, before)
    assert not pruner.wrappers
