"""LotteryTicketPruner: iterative magnitude pruning with rewinding (Frankle & Carbin, 2019)."""
from __future__ import annotations

import copy
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from nncore.artifacts import copy_state_dict, keep_metadata
from nncore.compressor import Pruner
from nncore.config import FRACTION
from nncore.config.schema import same_value_errors
from nncore.errors import ConfigError, NncoreError
from nncore.hookspecs import hookimpl
from nncore.wrapper import ModuleWrapper

MASK_BUFFERS = ("weight_mask", "bias_mask")


def lottery_sparsity(final_sparsity: float, prune_iterations: int, round_index: int) -> float:
    """Sparsity after ``round_index`` rounds: each round prunes ``1-(1-P)^(1/n)`` of the survivors."""
    return 1.0 - (1.0 - final_sparsity) ** (round_index / prune_iterations)


def nested_magnitude_mask(weight: torch.Tensor, current_mask: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune ``int(sparsity * numel)`` weights: the already pruned ones first, then the smallest ``|w|``."""
    count = int(sparsity * weight.numel())
    mask = torch.ones_like(weight)
    if count > 0:
        score = torch.where(current_mask.bool(), weight.detach().abs(), torch.full_like(weight, -1.0))
        mask.view(-1)[torch.topk(score.flatten(), count, largest=False).indices] = 0
    return mask


class LotteryTicketPruner(Pruner):
    """Finds a winning ticket: train, prune the smallest survivors, rewind, repeat.

    ``config_list`` keys: ``sparsity`` (the final fraction of each layer's weights to prune) and
    ``prune_iterations`` (the number of pruning rounds ``n``, the same in every entry). Round
    ``k`` (``k = 0 .. n``) leaves each layer at sparsity ``1-(1-sparsity)^(k/n)``; round 0 prunes
    nothing and trains the dense model.

    >>> pruner = LotteryTicketPruner(model, [{"sparsity": 0.8, "prune_iterations": 5,
    ...                                        "op_types": ["default"]}], optimizer)
    >>> pruner.compress()
    >>> for _ in pruner.get_prune_iterations():
    ...     pruner.prune_iteration_start()
    ...     train(model, optimizer, epochs)

    :param model: the model to prune.
    :param config_list: see above.
    :param optimizer: the optimizer that trains ``model``; rewound with the weights.
    :param lr_scheduler: its learning-rate scheduler, if any; rewound too.
    :param reset_weights: rewind weights, optimizer and scheduler to their state at
        ``compress()`` at the start of every round (the lottery ticket procedure).
    :param plugins: extra hook implementations (see :mod:`nncore.hookspecs`).
    :raises ConfigError: bad ``config_list``, or no optimizer while ``reset_weights`` is set.
    """

    name: ClassVar[str] = "lottery"
    job_arguments: ClassVar[Mapping[str, str]] = {"optimizer": "optimizer"}
    job_config: ClassVar[Mapping[str, str]] = {"sparsity": "sparsity", "prune_iterations": "pruning_rounds"}
    config_schema: ClassVar[dict[str, Any]] = {
        "properties": {
            "sparsity": {**FRACTION, "description": "Final fraction of each layer's weights to prune."},
            "prune_iterations": {"type": "integer", "minimum": 1, "description": "Number of pruning rounds."},
        },
        "required": ["sparsity", "prune_iterations"],
    }

    def __init__(
        self,
        model: nn.Module,
        config_list: Sequence[dict[str, Any]],
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
        reset_weights: bool = True,
        *,
        plugins: Iterable[Any] = (),
    ):
        if reset_weights and not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(
                f"optimizer: LotteryTicketPruner rewinds the optimizer every round and needs a "
                f"torch.optim.Optimizer, got {type(optimizer).__name__}",
                header="invalid argument",
            )
        if lr_scheduler is not None and not callable(getattr(lr_scheduler, "state_dict", None)):
            raise ConfigError(
                f"lr_scheduler: must have state_dict()/load_state_dict(), got {type(lr_scheduler).__name__}",
                header="invalid argument",
            )
        self.lr_scheduler = lr_scheduler
        self.reset_weights = reset_weights
        super().__init__(model, config_list, optimizer, plugins=plugins)
        self.prune_iterations: int = self.layer_configs[0]["prune_iterations"] if self.layer_configs else 1
        self.curr_prune_iteration: int | None = None
        self._initial_state: dict[str, Any] = {}

    @hookimpl
    def validate_config(self, config_list: list[dict[str, Any]]) -> list[str]:
        return same_value_errors(config_list, "prune_iterations", "all entries must use the same number of rounds")

    @hookimpl
    def calc_mask(self, wrapper: ModuleWrapper, sparsity: float) -> dict[str, torch.Tensor | None]:
        return {
            "weight_mask": nested_magnitude_mask(wrapper.module.weight, wrapper.weight_mask, sparsity),
            "bias_mask": None,
        }

    def compress(self) -> nn.Module:
        """Wrap the layers (no weight pruned yet) and snapshot weights, optimizer and scheduler."""
        model = super().compress()
        state = copy_state_dict(model)
        self._initial_state = {
            "model": keep_metadata({k: v for k, v in state.items() if not _is_mask(k)}, state),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()) if self.optimizer is not None else None,
            "lr_scheduler": copy.deepcopy(self.lr_scheduler.state_dict()) if self.lr_scheduler is not None else None,
        }
        return model

    def update_masks(self, sparsities: Mapping[str, float] | None = None) -> None:
        """Without ``sparsities``: every layer at the current round's scheduled sparsity."""
        if sparsities is None:
            sparsities = {name: self.current_sparsity(name) for name in self.wrappers}
        super().update_masks(sparsities)

    def current_sparsity(self, name: str) -> float:
        """The sparsity of layer ``name`` in the current round (0 before the first round)."""
        if self.curr_prune_iteration is None:
            return 0.0
        return lottery_sparsity(self.wrappers[name].config["sparsity"], self.prune_iterations, self.curr_prune_iteration)

    def get_prune_iterations(self) -> range:
        """The rounds, ``range(prune_iterations + 1)``: round 0 trains the dense model."""
        return range(self.prune_iterations + 1)

    def prune_iteration_start(self) -> None:
        """Start the next round: prune the smallest survivors, then rewind (if ``reset_weights``).

        :raises NncoreError: called before ``compress()`` or more than ``prune_iterations + 1`` times.
        """
        if not self.wrappers:
            raise NncoreError("LotteryTicketPruner.prune_iteration_start: call compress() first")
        next_round = 0 if self.curr_prune_iteration is None else self.curr_prune_iteration + 1
        if next_round > self.prune_iterations:
            raise NncoreError(
                f"LotteryTicketPruner.prune_iteration_start: all {self.prune_iterations + 1} rounds "
                "(see get_prune_iterations()) were already started"
            )
        self.curr_prune_iteration = next_round
        self.update_masks()
        if self.reset_weights:
            self._rewind()

    def _rewind(self) -> None:
        self.bound_model.load_state_dict(self._initial_state["model"], strict=False)
        self.apply_masks()
        self.optimizer.load_state_dict(copy.deepcopy(self._initial_state["optimizer"]))
        if self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(copy.deepcopy(self._initial_state["lr_scheduler"]))


def _is_mask(key: str) -> bool:
    return key.rpartition(".")[2] in MASK_BUFFERS


@hookimpl
def register_compressors() -> list[type]:
    return [LotteryTicketPruner]
