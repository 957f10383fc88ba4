"""AGPPruner: automated gradual pruning (Zhu & Gupta, 2017) over any registered pruner."""
from __future__ import annotations

import inspect
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from nncore.compressor import Pruner
from nncore.config import FRACTION, LayerConfig
from nncore.errors import ConfigError
from nncore.hookspecs import hookimpl
from nncore.registry import get_compressor
from nncore.wrapper import ModuleWrapper


def agp_sparsity(config: LayerConfig, epoch: int) -> float:
    """Zhu & Gupta's cubic schedule at ``epoch``.

    Masks are updated at ``start_epoch``, ``start_epoch + frequency``, ... up to the last
    such epoch before ``end_epoch`` (``start + span``), which reaches ``final_sparsity``:
    ``s = s_f + (s_i - s_f) * (1 - (epoch - start) / span) ** 3``. Training for
    ``end_epoch`` epochs counted from 0 therefore ends at the final sparsity, as in NNI.
    """
    initial, final = config["initial_sparsity"], config["final_sparsity"]
    start, end, frequency = config["start_epoch"], config["end_epoch"], config["frequency"]
    span = ((end - start - 1) // frequency) * frequency
    if span <= 0 or epoch >= start + span:
        return final
    progress = max(epoch - start, 0) // frequency * frequency / span
    return final + (initial - final) * (1.0 - progress) ** 3


def is_pruning_epoch(config: LayerConfig, epoch: int) -> bool:
    """Whether the schedule updates this layer's masks at ``epoch``."""
    start, frequency = config["start_epoch"], config["frequency"]
    return epoch >= start and (epoch - start) % frequency == 0


class AGPPruner(Pruner):
    """Gradually raises sparsity from ``initial_sparsity`` to ``final_sparsity``.

    Call ``pruner.update_epoch(epoch)`` at the start of every epoch. The masks come from
    ``pruning_algorithm``, any registered pruner (``'level'`` by default).

    :param model: the model to prune.
    :param config_list: keys ``initial_sparsity`` (default 0), ``final_sparsity``,
        ``start_epoch`` (default 0), ``end_epoch``, ``frequency`` (default 1).
    :param optimizer: passed on to algorithms that need one (``taylorfo``).
    :param pruning_algorithm: registry name of the pruner that computes the masks.
    :param algorithm_options: extra keyword arguments for that pruner's constructor.
    :param plugins: extra hook implementations (see :mod:`nncore.hookspecs`).
    """

    name: ClassVar[str] = "agp"
    aliases: ClassVar[tuple[str, ...]] = ("AGP_Pruner",)
    job_arguments: ClassVar[Mapping[str, str]] = {"optimizer": "optimizer"}
    job_config: ClassVar[Mapping[str, str]] = {"final_sparsity": "sparsity", "end_epoch": "pruning_epochs"}
    config_schema: ClassVar[dict[str, Any]] = {
        "properties": {
            "initial_sparsity": {**FRACTION, "default": 0},
            "final_sparsity": FRACTION,
            "start_epoch": {"type": "integer", "minimum": 0, "default": 0},
            "end_epoch": {"type": "integer", "minimum": 0},
            "frequency": {"type": "integer", "minimum": 1, "default": 1},
        },
        "required": ["final_sparsity", "end_epoch"],
    }

    def __init__(
        self,
        model: nn.Module,
        config_list: Sequence[dict[str, Any]],
        optimizer: torch.optim.Optimizer | None = None,
        pruning_algorithm: str = "level",
        *,
        algorithm_options: dict[str, Any] | None = None,
        plugins: Iterable[Any] = (),
    ):
        algorithm_class = get_compressor(pruning_algorithm)
        if not issubclass(algorithm_class, Pruner) or issubclass(algorithm_class, AGPPruner):
            raise ConfigError(
                f"pruning_algorithm {pruning_algorithm!r} is a {algorithm_class.kind or 'compressor'}, "
                "not a one-shot pruner AGP can schedule",
                header="invalid argument",
            )
        super().__init__(model, config_list, optimizer, plugins=plugins)
        options = dict(algorithm_options or {})
        if optimizer is not None and "optimizer" in inspect.signature(algorithm_class).parameters:
            options["optimizer"] = optimizer
        self.epoch = 0
        self.algorithm: Pruner = algorithm_class(model, self._algorithm_config_list(), **options)
        self.dummy_input = getattr(self.algorithm, "dummy_input", None)  # recorded in the mask file by export_model

    def _algorithm_config_list(self) -> list[dict[str, Any]]:
        selection_keys = ("op_types", "op_names", "exclude")
        return [
            {
                **{k: v for k, v in entry.items() if k in selection_keys},
                **({} if entry.get("exclude") else {"sparsity": entry["final_sparsity"]}),
            }
            for entry in self.config_list
        ]

    @hookimpl
    def validate_config(self, config_list: list[dict[str, Any]]) -> list[str]:
        errors = []
        for index, entry in enumerate(config_list):
            initial, final = entry.get("initial_sparsity", 0), entry.get("final_sparsity")
            if final is not None and initial > final:
                errors.append(f"config_list[{index}].final_sparsity: {final} is below initial_sparsity {initial}")
            start, end = entry.get("start_epoch", 0), entry.get("end_epoch")
            if end is not None and end <= start:
                errors.append(f"config_list[{index}].end_epoch: {end} must be greater than start_epoch {start}")
        return errors

    def all_wrappers(self) -> dict[str, nn.Module]:
        """AGP's layers plus the followers its algorithm added (e.g. BatchNorm after a filter)."""
        return {**super().all_wrappers(), **self.algorithm.followers}

    def unwrap_model(self) -> nn.Module:
        self.algorithm.unwrap_model()  # restores its followers and removes its statistics hooks
        return super().unwrap_model()

    def after_wrap(self) -> None:
        self.algorithm.wrappers = self.wrappers
        self.algorithm.after_wrap()

    def update_masks(self, sparsities: Mapping[str, float] | None = None) -> None:
        """Without ``sparsities``: update the layers whose schedule is due at the current epoch."""
        if sparsities is None:
            sparsities = {
                name: agp_sparsity(w.config, self.epoch)
                for name, w in self.wrappers.items()
                if is_pruning_epoch(w.config, self.epoch)
            }
        super().update_masks(sparsities)

    @hookimpl(trylast=True)
    def calc_mask(self, wrapper: ModuleWrapper, sparsity: float) -> dict[str, torch.Tensor | None] | None:
        return self.algorithm.hook.calc_mask(compressor=self.algorithm, wrapper=wrapper, sparsity=sparsity)

    @hookimpl(specname="update_epoch")
    def on_update_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.algorithm.update_epoch(epoch)
        if self.wrappers:
            self.update_masks()

    @hookimpl(specname="step")
    def on_step(self) -> None:
        self.algorithm.step()

    def current_sparsity(self, name: str) -> float:
        """The scheduled sparsity of layer ``name`` at the current epoch."""
        return agp_sparsity(self.wrappers[name].config, self.epoch)


AGP_Pruner = AGPPruner
"""The seed's name for :class:`AGPPruner`."""


@hookimpl
def register_compressors() -> list[type]:
    return [AGPPruner]
