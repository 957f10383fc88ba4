"""Broadcast hooks: training progress and configuration checks. Every implementation runs."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nncore.hookspecs import hookspec

if TYPE_CHECKING:
    from nncore.compressor import Compressor


@hookspec
def update_epoch(compressor: Compressor, epoch: int) -> None:
    """Called by ``compressor.update_epoch(epoch)``, once per epoch of the user's training.

    :param compressor: the compressor being trained.
    :param epoch: the epoch that starts now (0-based, as the user counts).
    """


@hookspec
def step(compressor: Compressor) -> None:
    """Called by ``compressor.step()``, after each mini-batch of the user's training.

    :param compressor: the compressor being trained.
    """


@hookspec
def validate_config(compressor: Compressor, config_list: list[dict[str, Any]]) -> list[str] | None:
    """Check what JSON Schema cannot (relations between keys, values against the model).

    Runs after the schema check passed and before anything is touched.

    :param compressor: the compressor being built (its ``bound_model`` is set).
    :param config_list: the user's list, already schema-valid.
    :return: error messages in the form ``"config_list[1].end_epoch: ..."``, or ``None``.
    """
