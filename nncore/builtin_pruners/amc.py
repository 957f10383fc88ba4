"""AMCPruner: AutoML for Model Compression (He et al., ECCV 2018), NNI 1.9's ``AMCPruner``.

A DDPG agent (:mod:`nncore.builtin_pruners.amc_agent`) walks through the prunable layers one by
one and picks each one's *preserve ratio* (fraction of output channels kept) from a state that
describes the layer (index, type, channels, stride, kernel, size) and the episode so far (FLOPs
already removed, FLOPs of the layers still to come, the previous ratio). The action is clipped
so that the FLOPs budget is always met: a layer keeps at most what the budget allows once
every later layer is assumed at its minimum (``lbound``), and at least that minimum. When the
last layer is decided, the channels are pruned (least important first), the layers reading
them are rebuilt by least squares (:mod:`nncore.builtin_pruners.amc_channels`), and the
validation metric becomes the reward of every step of the episode.

The search works on a copy of the model; ``compress()`` then gives the model the best
episode's weights and masks.
"""
from __future__ import annotations

import math
import os
import re
from fractions import Fraction
from itertools import islice
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from nncore.artifacts import save_torch
from nncore.builtin_pruners.amc_agent import DDPG, AgentOptions
from nncore.builtin_pruners.amc_channels import ChannelModel, batch_inputs, first_of, to_device
from nncore.builtin_pruners.filter_base import filter_masks
from nncore.builtin_pruners.search_base import (
    HISTORY_FILE,
    RESULT_FILE,
    callable_error,
    choice_error,
    number_error,
    progress,
    raise_argument_errors,
    write_json,
)
from nncore.compressor import Pruner
from nncore.errors import ConfigError, NncoreError
from nncore.hookspecs import hookimpl
from nncore.wrapper import ModuleWrapper

REWARDS: dict[str, Callable[[float, int], float]] = {
    "acc_reward": lambda accuracy, flops: accuracy * 0.01,
    "acc_flops_reward": lambda accuracy, flops: -(100 - accuracy) * 0.01 * math.log(flops),
}
"""NNI's rewards, of the evaluator's accuracy in percent and the pruned model's FLOPs."""
BEST_MODEL_FILE = "best_model.pth"
BEST_MASK_FILE = "best_mask.pth"
AGENT_FILE = "agent.pth"


# ------------------------------------------------------------------------------ the environment
def preserved_count(ratio: float, channels: int, channel_round: int) -> int:
    """Channels kept at preserve ratio ``ratio``, as NNI rounds them: ``int(channels * (1 - ratio))``
    go, and the rest is rounded up to a multiple of ``channel_round`` (at most ``channels``, at least 1)."""
    kept = max(channels - int(channels * (1.0 - ratio)), 1)
    return min(channels, math.ceil(kept / channel_round) * channel_round)


def allowed_counts(channels: int, channel_round: int) -> list[int]:
    """Every channel count rounding can give: multiples of ``channel_round`` below ``channels``, and ``channels``."""
    return list(range(channel_round, channels, channel_round)) + [channels]


class ChannelPruningEnv:
    """One episode = one preserve ratio per channel group, under a FLOPs budget.

    :param channels: the analysed model.
    :param flops_ratio: the pruned model keeps at most this fraction of the FLOPs.
    :param lbound: smallest preserve ratio of a layer.
    :param rbound: largest preserve ratio the agent may ask for.
    :param channel_round: kept channels are a multiple of it (or all of them).
    :raises ConfigError: the budget cannot be met with every layer at ``lbound``.
    """

    STATIC_FEATURES = 7

    def __init__(self, channels: ChannelModel, flops_ratio: float, lbound: float, rbound: float, channel_round: int):
        self.channels = channels
        self.groups = channels.groups
        self.lbound, self.rbound, self.channel_round = lbound, rbound, channel_round
        self.org_flops = channels.original_flops
        self.budget = Fraction(flops_ratio) * self.org_flops
        self.allowed = [allowed_counts(g.channels, channel_round) for g in self.groups]
        self.min_counts = [preserved_count(lbound, g.channels, channel_round) for g in self.groups]
        smallest = channels.flops(channels.removed(dict(enumerate(self.min_counts))))
        if smallest > self.budget:
            raise ConfigError(
                f"flops_ratio: {flops_ratio} cannot be met: with every prunable layer at lbound {lbound} "
                f"(channels rounded to multiples of {channel_round}) the model keeps "
                f"{smallest / self.org_flops:.4f} of its FLOPs; raise flops_ratio or lower lbound or channel_round",
                header="invalid argument for AMCPruner",
            )
        self.own_flops = [self._own_flops(g.roots) for g in self.groups]
        self.embedding = self._static_embedding()
        self.reset()

    @property
    def state_size(self) -> int:
        """Length of a state vector."""
        return self.embedding.shape[1]

    def _own_flops(self, roots: np.ndarray) -> int:
        group = set(roots.tolist())
        return sum(cost.flops for cost in self.channels.costs
                   if cost.out_roots is not None and group & set(cost.out_roots.tolist()))

    def _static_embedding(self) -> torch.Tensor:
        """Per step: index, type (0 conv, 1 linear), in and out channels, stride, kernel, weight size,
        then three dynamic features (FLOPs removed, FLOPs still to decide, previous action);
        every static column scaled to [0, 1] across the steps, as in AMC."""
        rows = []
        for index, group in enumerate(self.groups):
            layer = self.channels.modules[group.members[0]]
            if isinstance(layer, nn.Linear):
                rows.append([index, 1, layer.in_features, layer.out_features, 0, 1, layer.weight.numel()])
            else:
                rows.append([index, 0, layer.in_channels, layer.out_channels, layer.stride[0], layer.kernel_size[0],
                             layer.weight.numel()])
        static = torch.tensor(rows, dtype=torch.float64)
        low, high = static.min(0).values, static.max(0).values
        span = torch.where(high > low, high - low, torch.ones_like(high))
        static = torch.where(high > low, (static - low) / span, static)
        return torch.cat([static, torch.zeros(len(rows), 3, dtype=torch.float64)], 1)

    def reset(self) -> torch.Tensor:
        """Start an episode; returns the first state."""
        self.kept: dict[int, int] = {}
        self.strategy: list[float] = []
        return self.state()

    @property
    def step_index(self) -> int:
        return len(self.kept)

    def state(self) -> torch.Tensor:
        """The state of the current step."""
        t = self.step_index
        current = self.channels.flops(self.channels.removed(self.kept))
        state = self.embedding[t].clone()
        state[-3] = (self.org_flops - current) / self.org_flops
        state[-2] = sum(self.own_flops[t + 1:]) / self.org_flops
        state[-1] = self.strategy[-1] if self.strategy else 1.0
        return state.float()

    def max_count(self, index: int) -> int:
        """The most channels group ``index`` may keep with every later group at its minimum."""
        later = {i: self.min_counts[i] for i in range(index + 1, len(self.groups))}
        allowed = self.allowed[index]

        def fits(count: int) -> bool:
            return self.channels.flops(self.channels.removed({**self.kept, index: count, **later})) <= self.budget

        low, high = 0, len(allowed) - 1  # allowed[low] fits (the invariant); find the last that fits
        while low < high:
            middle = (low + high + 1) // 2
            if fits(allowed[middle]):
                low = middle
            else:
                high = middle - 1
        return allowed[low]

    def action_wall(self, action: float) -> int:
        """The channels the current group keeps for the agent's ``action``: clipped to
        [lbound, rbound], rounded, then at most what the budget allows and at least the minimum."""
        index = self.step_index
        ratio = min(max(float(action), self.lbound), self.rbound)
        count = preserved_count(ratio, self.groups[index].channels, self.channel_round)
        return max(min(count, self.max_count(index)), self.min_counts[index])

    def step(self, action: float) -> tuple[torch.Tensor, bool]:
        """Decide the current group; returns the next state and whether the episode is over."""
        index = self.step_index
        count = self.action_wall(action)
        self.kept[index] = count
        self.strategy.append(count / self.groups[index].channels)
        done = self.step_index == len(self.groups)
        return (self.embedding[index].float() if done else self.state()), done


# ------------------------------------------------------------------------------ argument checks
def amc_argument_errors(values: Mapping[str, Any]) -> list[str]:
    """Messages for every AMC argument out of range (``values`` maps names to values)."""
    v = values
    errors = callable_error(v["evaluator"], "evaluator: evaluator(val_loader, model) -> accuracy")
    if v["suffix"] is not None and not isinstance(v["suffix"], str):
        errors.append(f"suffix: must be a string or None, got {v['suffix']!r}")
    for name in ("model_type", "dataset"):
        if not isinstance(v[name], str) or not v[name]:
            errors.append(f"{name}: must be a non-empty string, got {v[name]!r}")
    errors += number_error(v["flops_ratio"], "flops_ratio", low=0, high=1, low_open=True)
    errors += number_error(v["lbound"], "lbound", low=0, high=1, low_open=True)
    errors += number_error(v["rbound"], "rbound", low=0, high=1, low_open=True)
    if not any(e.startswith(("lbound", "rbound")) for e in errors) and v["lbound"] > v["rbound"]:
        errors.append(f"lbound: must not exceed rbound {v['rbound']}, got {v['lbound']}")
    errors += choice_error(v["reward"], "reward", tuple(REWARDS))
    for name in ("n_calibration_batches", "n_points_per_layer", "channel_round", "hidden1", "hidden2", "bsize",
                 "rmsize", "train_episode"):
        errors += number_error(v[name], name, low=1, integer=True)
    errors += number_error(v["warmup"], "warmup", low=0, integer=True)
    errors += number_error(v["lr_c"], "lr_c", low=0, low_open=True)
    errors += number_error(v["lr_a"], "lr_a", low=0, low_open=True)
    errors += number_error(v["discount"], "discount", low=0, high=1)
    errors += number_error(v["tau"], "tau", low=0, high=1, low_open=True)
    errors += number_error(v["init_delta"], "init_delta", low=0, low_open=True)
    errors += number_error(v["delta_decay"], "delta_decay", low=0, high=1, low_open=True)
    errors += number_error(v["max_episode_length"], "max_episode_length", low=0, low_open=True)
    errors += number_error(v["epsilon"], "epsilon", low=0, low_open=True)
    if v["window_length"] != 1 or isinstance(v["window_length"], bool):
        errors.append(f"window_length: only 1 is supported (the agent sees one state per step, as NNI's "
                      f"networks do), got {v['window_length']!r}")
    if not isinstance(v["debug"], bool):
        errors.append(f"debug: must be a bool, got {v['debug']!r}")
    if not isinstance(v["output_dir"], (str, os.PathLike)):
        errors.append(f"output_dir: must be a path, got {type(v['output_dir']).__name__}")
    if v["seed"] is not None and (isinstance(v["seed"], bool) or not isinstance(v["seed"], int)):
        errors.append(f"seed: must be an int or None, got {v['seed']!r}")
    return errors


def run_folder(output_dir: str | os.PathLike, base: str, suffix: str | None) -> Path:
    """NNI's folder: ``output_dir/base-suffix``, or ``output_dir/base-runN`` with ``N`` one more than
    the highest run number there."""
    parent = Path(output_dir)
    if suffix is not None:
        return parent / f"{base}-{suffix}"
    runs = [int(m.group(1)) for p in (parent.iterdir() if parent.is_dir() else ())
            if p.is_dir() and (m := re.search(r"-run(\d+)$", p.name))]
    return parent / f"{base}-run{max(runs, default=0) + 1}"


# ------------------------------------------------------------------------------ the pruner
class AMCPruner(Pruner):
    """Per-layer preserve ratios found by a DDPG agent under a FLOPs budget (NNI 1.9's signature).

    ``config_list`` selects the layers (``op_types`` / ``op_names`` / ``exclude``; default
    Conv2d and Linear); no sparsity: the budget is ``flops_ratio``. A selected layer is pruned
    when its output channels can really be removed (they do not reach the model output, and
    every layer they are coupled with by a residual add is selected too); coupled layers share
    one ratio. The search runs ``train_episode`` episodes on a copy of the model; ``compress()``
    then loads the best episode's weights (least-squares rebuilt) into the model and masks the
    pruned channels (filters, and the BatchNorms and depthwise convolutions that carry them).
    Files in :attr:`output_dir`: ``search_history.json`` (every episode), ``search_result.json``,
    ``best_model.pth`` / ``best_mask.pth`` (updated at each new best, as NNI does), ``agent.pth``.

    :param model: the model to prune.
    :param config_list: see above.
    :param evaluator: ``evaluator(val_loader, model) -> accuracy`` (in percent, as NNI's examples
        return it; the rewards are NNI's formulas of it).
    :param val_loader: validation batches ``(inputs, targets)`` (or inputs alone); the first
        ``n_calibration_batches`` also calibrate the least-squares rebuild, the first one's first
        sample is the input traced for the channel analysis and the FLOPs count.
    :param suffix: output folder suffix (default: ``-runN``).
    :param model_type: only names the output folder (channel couplings are found by tracing).
    :param dataset: only names the output folder.
    :param flops_ratio: the pruned model keeps at most this fraction of the FLOPs
        (``nncore.utils.count_flops_params`` on one sample).
    :param lbound: smallest preserve ratio of a layer.
    :param rbound: largest preserve ratio of a layer.
    :param reward: ``'acc_reward'`` (accuracy / 100) or ``'acc_flops_reward'``
        (``-(100 - accuracy) / 100 * log(flops)``).
    :param n_calibration_batches: validation batches for the least-squares rebuild.
    :param n_points_per_layer: positions per image sampled from each convolution's input.
    :param channel_round: kept channels are rounded up to a multiple of it.
    :param hidden1: width of the agent's first hidden layer.
    :param hidden2: width of its second hidden layer.
    :param lr_c: critic learning rate.
    :param lr_a: actor learning rate.
    :param warmup: episodes of random actions before the agent learns.
    :param discount: discount of the next step's value.
    :param bsize: agent minibatch size.
    :param rmsize: replay memory per prunable layer (times the number of steps).
    :param window_length: NNI's replay window; only 1 is supported.
    :param tau: soft update rate of the target networks.
    :param init_delta: initial width of the exploration noise.
    :param delta_decay: its decay per episode after the warm-up.
    :param max_episode_length: accepted for compatibility (unused, as in NNI).
    :param output_dir: parent folder of the output folder.
    :param debug: accepted for compatibility (unused, as in NNI).
    :param train_episode: number of episodes.
    :param epsilon: accepted for compatibility (unused, as in NNI).
    :param seed: seeds the agent and the calibration sampling (``None``: not seeded).
    :param verbose: show a progress bar.
    :param plugins: extra hook implementations (see :mod:`nncore.hookspecs`).
    :raises ConfigError: a bad argument or ``config_list``, a budget that cannot be met, or no
        prunable layer; the model is untouched.
    """

    name: ClassVar[str] = "amc"
    job_arguments: ClassVar[Mapping[str, str]] = {
        "evaluator": "loader_evaluator", "val_loader": "test_data", "flops_ratio": "kept_fraction",
        "train_episode": "search_steps", "warmup": "search_warmup", "output_dir": "output_dir", "seed": "seed",
        "verbose": "verbose",
    }
    job_config: ClassVar[Mapping[str, str]] = {}  # the budget is flops_ratio, not a sparsity
    default_op_types: ClassVar[tuple[str, ...]] = ("Conv2d", "Linear")
    supported_op_types: ClassVar[tuple[str, ...] | None] = ("Conv2d", "Linear")

    def __init__(
        self,
        model: nn.Module,
        config_list: Sequence[dict[str, Any]],
        evaluator: Callable[[Any, nn.Module], float],
        val_loader: Iterable[Any],
        suffix: str | None = None,
        model_type: str = "mobilenet",
        dataset: str = "cifar10",
        flops_ratio: float = 0.5,
        lbound: float = 0.2,
        rbound: float = 1.0,
        reward: str = "acc_reward",
        n_calibration_batches: int = 60,
        n_points_per_layer: int = 10,
        channel_round: int = 8,
        hidden1: int = 300,
        hidden2: int = 300,
        lr_c: float = 1e-3,
        lr_a: float = 1e-4,
        warmup: int = 100,
        discount: float = 1.0,
        bsize: int = 64,
        rmsize: int = 100,
        window_length: int = 1,
        tau: float = 0.01,
        init_delta: float = 0.5,
        delta_decay: float = 0.99,
        max_episode_length: float = 1e9,
        output_dir: str = "./logs",
        debug: bool = False,
        train_episode: int = 800,
        epsilon: int = 50000,
        seed: int | None = None,
        *,
        verbose: bool = True,
        plugins: Iterable[Any] = (),
    ):
        arguments = dict(locals())
        raise_argument_errors(amc_argument_errors(arguments), type(self).__name__)
        self.evaluator, self.val_loader = evaluator, val_loader
        self.flops_ratio, self.reward_name, self.reward = flops_ratio, reward, REWARDS[reward]
        self.n_calibration_batches, self.n_points_per_layer = n_calibration_batches, n_points_per_layer
        self.train_episode, self.warmup, self.seed, self.verbose = train_episode, warmup, seed, verbose
        self.agent_hyper = {k: arguments[k] for k in ("hidden1", "hidden2", "lr_c", "lr_a", "warmup", "discount",
                                                      "bsize", "tau", "init_delta", "delta_decay")}
        self.rmsize = rmsize
        self.best: dict[str, Any] | None = None
        self.best_strategy: list[float] | None = None
        super().__init__(model, config_list, plugins=plugins)
        dummy_input = self._dummy_input(model)
        try:
            self.channels = ChannelModel(model, [c.name for c in self.layer_configs], dummy_input)
        except NncoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's model failing on the user's data
            raise ConfigError(f"val_loader: the model cannot be analysed on the first sample of its first batch "
                              f"({type(exc).__name__}: {exc})", header="invalid argument for AMCPruner") from exc
        if not self.channels.groups:
            raise ConfigError(
                "config_list: no selected layer has output channels AMC can remove (channels that reach the "
                "model output, or that a residual add couples with a layer not selected, stay)",
                header="invalid config_list for AMCPruner")
        self.env = ChannelPruningEnv(self.channels, flops_ratio, lbound, rbound, channel_round)
        self.output_dir = run_folder(output_dir, f"{model_type}_{dataset}_r{flops_ratio}_search", suffix)
        self.history: list[dict[str, Any]] = []
        self.original_accuracy: float | None = None
        self.agent: DDPG | None = None
        self._removed: np.ndarray | None = None

    def _dummy_input(self, model: nn.Module) -> Any:
        try:
            first = next(iter(self.val_loader), None)
        except TypeError:
            raise ConfigError(f"val_loader: must be an iterable of batches such as a DataLoader, got "
                              f"{type(self.val_loader).__name__}", header="invalid argument for AMCPruner") from None
        if first is None:
            raise ConfigError("val_loader: it yields no batch", header="invalid argument for AMCPruner")
        return to_device(first_of(batch_inputs(first), 1), self._device(model))

    @staticmethod
    def _device(model: nn.Module) -> torch.device:
        parameter = next(model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    # -- the search --------------------------------------------------------------------------
    def compress(self) -> nn.Module:
        """Run the search on a copy, then give the model the best episode's weights and masks."""
        if self.wrappers:
            raise NncoreError("AMCPruner: compress() was already called on this compressor")
        generator = torch.Generator()
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        device = self._device(self.channels.model)
        batches = (to_device(batch_inputs(b), device) for b in islice(self.val_loader, self.n_calibration_batches))
        self.channels.model.eval()
        self.channels.calibrate(batches, self.n_points_per_layer, generator)
        options = AgentOptions(**self.agent_hyper, rmsize=self.rmsize * len(self.env.groups))
        self.agent = DDPG(self.env.state_size, options, seed=self.seed)
        self.channels.model.load_state_dict(self.channels.original_state)
        self.original_accuracy = float(self.evaluator(self.val_loader, self.channels.model))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        bar = progress(self.train_episode, "AMC episodes", self.verbose)
        for episode in range(self.train_episode):
            self._episode(episode)
            bar.set_postfix(best=f"{self.best['accuracy']:.4g}", last=f"{self.history[-1]['accuracy']:.4g}")
            bar.update()
        bar.close()
        save_torch(self.agent.state_dict(), self.output_dir / AGENT_FILE)
        self._removed = self.channels.removed(self.best["kept"])
        self.channels.apply(self._removed)
        self.bound_model.load_state_dict(self.channels.model.state_dict())
        model = super().compress()
        self.write_history()
        return model

    def _episode(self, episode: int) -> None:
        env, agent = self.env, self.agent
        exploring = episode < self.warmup
        state, transitions, done = env.reset(), [], False
        while not done:
            action = agent.random_action() if exploring else agent.select_action(state, episode)
            next_state, done = env.step(action)
            transitions.append((state, action, next_state, done))
            state = next_state
        removed = self.channels.removed(env.kept)
        masks = self.channels.apply(removed)
        accuracy = float(self.evaluator(self.val_loader, self.channels.model))
        flops = self.channels.flops(removed)
        reward = float(self.reward(accuracy, flops))
        for state, action, next_state, done in transitions:
            agent.observe(state, action, reward, next_state, done)
            if not exploring:
                agent.update_policy()
        entry = {"episode": episode, "random": exploring, "accuracy": accuracy, "reward": reward, "flops": flops,
                 "flops_ratio": flops / env.org_flops, "strategy": list(env.strategy),
                 "channels": {g.members[0]: env.kept[i] for i, g in enumerate(env.groups)}}
        self.history.append(entry)
        if self.best is None or reward > self.best["reward"]:
            self.best = {**entry, "kept": dict(env.kept)}
            self.best_strategy = list(env.strategy)
            save_torch(self.channels.model.state_dict(), self.output_dir / BEST_MODEL_FILE)
            save_torch({n: {"weight": m["weight"].cpu(), "bias": None if m["bias"] is None else m["bias"].cpu()}
                        for n, m in masks.items()}, self.output_dir / BEST_MASK_FILE)

    # -- masks ----------------------------------------------------------------------------------
    @hookimpl(trylast=True)
    def calc_mask(self, wrapper: ModuleWrapper, sparsity: float) -> dict[str, torch.Tensor | None] | None:
        """The best episode's filter mask of a selected layer (all ones if it lost nothing)."""
        if self._removed is None:
            return None
        keep = self.channels.channel_mask(wrapper.name, self._removed)
        module = wrapper.module
        if keep is None:
            keep = torch.ones(module.weight.shape[0])
        return filter_masks(module, keep.to(device=module.weight.device, dtype=module.weight.dtype))

    def after_wrap(self) -> None:
        """Wrap the BatchNorms and depthwise convolutions that carry pruned channels."""
        for name in self.channels.masks(self._removed):
            if name not in self.wrappers:
                self.add_follower(name, self.channels.leader_of(name))

    def update_masks(self, sparsities: Mapping[str, float] | None = None) -> None:
        """Set the masks the search found (``sparsities`` defaults to :meth:`final_sparsities`)."""
        if sparsities is None:
            sparsities = {name: self.final_sparsities().get(name, 0.0) for name in self.wrappers}
        super().update_masks(sparsities)
        for name, follower in self.followers.items():
            keep = self.channels.channel_mask(name, self._removed).to(follower.weight_mask)
            follower.set_masks(keep, None if follower.bias_mask is None else keep.clone())

    # -- results ----------------------------------------------------------------------------------
    def final_sparsities(self) -> dict[str, float]:
        """``{layer: fraction of its output channels pruned}`` of the best episode (empty before ``compress()``)."""
        if self.best is None:
            return {}
        return {name: 1 - kept / total for name, (kept, total) in self.final_channels().items()}

    def final_channels(self) -> dict[str, tuple[int, int]]:
        """``{layer: (output channels kept, output channels)}`` of the best episode's pruned layers."""
        if self.best is None:
            return {}
        return {member: (self.best["kept"][i], group.channels)
                for i, group in enumerate(self.env.groups) for member in group.members}

    def write_history(self) -> Path:
        """Write the episodes and the result as JSON into :attr:`output_dir`."""
        best = self.best
        result = {
            "algorithm": self.name,
            "target_flops_ratio": self.flops_ratio,
            "original_flops": self.env.org_flops,
            "flops": best["flops"],
            "flops_ratio": best["flops_ratio"],
            "original_accuracy": self.original_accuracy,
            "accuracy": best["accuracy"],
            "reward": best["reward"],
            "best_episode": best["episode"],
            "preserve_ratios": {m: best["strategy"][i] for i, g in enumerate(self.env.groups) for m in g.members},
            "channels": {name: list(counts) for name, counts in self.final_channels().items()},
        }
        write_json(self.output_dir / RESULT_FILE, result)
        return write_json(self.output_dir / HISTORY_FILE, {**result, "history": self.history})


@hookimpl
def register_compressors() -> list[type]:
    return [AMCPruner]
