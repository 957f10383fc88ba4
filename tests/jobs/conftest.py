"""Fixtures of the job tests."""
from __future__ import annotations

from typing import Any

import pytest

from nncore.jobs import baseline


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if the job trains its baseline (an error must come before any training)."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the job trained before reporting the error")

    monkeypatch.setattr(baseline, "train_epochs", refuse)
