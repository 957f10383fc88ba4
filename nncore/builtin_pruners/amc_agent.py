"""The DDPG agent of AMC (He et al., ECCV 2018): an actor picks a preserve ratio in [0, 1] for
the layer described by a state vector; a critic learns the value of (state, action) pairs.

As in AMC (and NNI's port): every transition of an episode gets the episode's final reward,
minus a moving-average baseline; the critic regresses ``r + discount * Q'(s', mu'(s'))``
(zero after the last layer); exploration adds truncated-normal noise whose width decays by
``delta_decay`` per episode after the warm-up; target networks follow by soft updates ``tau``.
Everything random draws from the agent's own seeded generator.
"""
from __future__ import annotations

import attrs
import torch
import torch.nn as nn

BASELINE_MOMENTUM = 0.5
"""Weight of a new batch's mean reward in the moving-average baseline (AMC's value)."""


@attrs.frozen
class AgentOptions:
    """The DDPG hyper-parameters (NNI's names and defaults)."""

    hidden1: int = 300
    hidden2: int = 300
    lr_c: float = 1e-3
    lr_a: float = 1e-4
    warmup: int = 100
    discount: float = 1.0
    bsize: int = 64
    rmsize: int = 100
    tau: float = 0.01
    init_delta: float = 0.5
    delta_decay: float = 0.99


class Actor(nn.Module):
    """state -> preserve ratio in (0, 1): two ReLU layers and a sigmoid."""

    def __init__(self, states: int, hidden1: int, hidden2: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(states, hidden1), nn.ReLU(), nn.Linear(hidden1, hidden2), nn.ReLU(),
                                 nn.Linear(hidden2, 1), nn.Sigmoid())

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state)


class Critic(nn.Module):
    """(state, action) -> value: the state and the action enter the first layer side by side."""

    def __init__(self, states: int, hidden1: int, hidden2: int):
        super().__init__()
        self.state_in = nn.Linear(states, hidden1)
        self.action_in = nn.Linear(1, hidden1)
        self.net = nn.Sequential(nn.ReLU(), nn.Linear(hidden1, hidden2), nn.ReLU(), nn.Linear(hidden2, 1))

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(self.state_in(state) + self.action_in(action))


class ReplayMemory:
    """The last ``limit`` transitions ``(state, action, reward, next_state, not_done)``."""

    def __init__(self, limit: int, states: int):
        self.limit = limit
        self.state = torch.zeros(limit, states)
        self.next_state = torch.zeros(limit, states)
        self.action = torch.zeros(limit, 1)
        self.reward = torch.zeros(limit, 1)
        self.not_done = torch.zeros(limit, 1)
        self.count = 0

    def __len__(self) -> int:
        return min(self.count, self.limit)

    def append(self, state: torch.Tensor, action: float, reward: float, next_state: torch.Tensor, done: bool) -> None:
        """Store one transition (the oldest is dropped when full)."""
        slot = self.count % self.limit
        self.state[slot], self.next_state[slot] = state, next_state
        self.action[slot, 0], self.reward[slot, 0], self.not_done[slot, 0] = action, reward, 0.0 if done else 1.0
        self.count += 1

    def sample(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """``size`` random transitions: distinct ones when there are enough, else with repeats."""
        stored = len(self)
        if stored >= size:
            index = torch.randperm(stored, generator=generator)[:size]
        else:
            index = torch.randint(stored, (size,), generator=generator)
        return (self.state[index], self.action[index], self.reward[index].clone(), self.next_state[index],
                self.not_done[index])


def truncated_normal(mean: float, std: float, low: float, high: float, generator: torch.Generator) -> float:
    """One draw from the normal distribution ``(mean, std)`` restricted to ``[low, high]``
    (inverse-CDF sampling)."""
    mean_t, std_t = torch.tensor(float(mean), dtype=torch.float64), torch.tensor(float(std), dtype=torch.float64)
    lower = torch.special.ndtr((low - mean_t) / std_t)
    upper = torch.special.ndtr((high - mean_t) / std_t)
    uniform = lower + (upper - lower) * torch.rand((), generator=generator, dtype=torch.float64)
    value = mean_t + std_t * torch.special.ndtri(uniform.clamp(1e-12, 1 - 1e-12))
    return float(value.clamp(low, high))


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """``target <- (1 - tau) * target + tau * source``, parameter by parameter."""
    with torch.no_grad():
        for target_parameter, parameter in zip(target.parameters(), source.parameters()):
            target_parameter.mul_(1.0 - tau).add_(parameter, alpha=tau)


class DDPG:
    """AMC's agent: actor, critic, their target copies, the replay memory and the noise.

    :param states: length of a state vector.
    :param options: the hyper-parameters; ``rmsize`` here is the whole memory (NNI multiplies
        the per-layer ``rmsize`` by the number of layers before building the agent).
    :param seed: seeds the networks' initialisation and every random draw (``None``: not seeded).
    """

    def __init__(self, states: int, options: AgentOptions, seed: int | None = None):
        self.options = options
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (), generator=self.generator)))
            self.actor = Actor(states, options.hidden1, options.hidden2)
            self.critic = Critic(states, options.hidden1, options.hidden2)
        self.actor_target = Actor(states, options.hidden1, options.hidden2)
        self.critic_target = Critic(states, options.hidden1, options.hidden2)
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=options.lr_a)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=options.lr_c)
        self.memory = ReplayMemory(options.rmsize, states)
        self.baseline: float | None = None

    def random_action(self) -> float:
        """A uniform draw in [0, 1] (the warm-up episodes' policy)."""
        return float(torch.rand((), generator=self.generator, dtype=torch.float64))

    def select_action(self, state: torch.Tensor, episode: int) -> float:
        """The actor's action plus truncated-normal noise of width
        ``init_delta * delta_decay ** (episode - warmup)``, within [0, 1]."""
        with torch.no_grad():
            mean = float(self.actor(state.float().unsqueeze(0)))
        delta = self.options.init_delta * self.options.delta_decay ** max(episode - self.options.warmup, 0)
        return truncated_normal(mean, delta, 0.0, 1.0, self.generator)

    def policy(self, state: torch.Tensor) -> float:
        """The actor's action without noise."""
        with torch.no_grad():
            return float(self.actor(state.float().unsqueeze(0)))

    def observe(self, state: torch.Tensor, action: float, reward: float, next_state: torch.Tensor, done: bool) -> None:
        """Remember one transition."""
        self.memory.append(state, action, reward, next_state, done)

    def update_policy(self) -> tuple[float, float]:
        """One critic and one actor step on a sampled batch; returns (critic loss, actor loss)."""
        state, action, reward, next_state, not_done = self.memory.sample(self.options.bsize, self.generator)
        batch_mean = float(reward.mean())
        if self.baseline is None:
            self.baseline = batch_mean
        else:
            self.baseline += BASELINE_MOMENTUM * (batch_mean - self.baseline)
        reward -= self.baseline
        with torch.no_grad():
            next_value = self.critic_target(next_state, self.actor_target(next_state))
            target = reward + self.options.discount * not_done * next_value
        critic_loss = nn.functional.mse_loss(self.critic(state, action), target)
        self.critic_optim.zero_grad()
        critic_loss.backward()
        self.critic_optim.step()
        actor_loss = -self.critic(state, self.actor(state)).mean()
        self.actor_optim.zero_grad()
        actor_loss.backward()
        self.actor_optim.step()
        soft_update(self.actor_target, self.actor, self.options.tau)
        soft_update(self.critic_target, self.critic, self.options.tau)
        return critic_loss.item(), actor_loss.item()

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """The actor's and the critic's weights (what NNI saves as ``actor.pkl`` / ``critic.pkl``)."""
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict()}
