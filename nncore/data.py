"""Data for the jobs: the built-in digits data set, user data callables, and the standard loops.

The built-in data is scikit-learn's 8x8 digits (1,797 images, no download): a fixed, stratified
split (75% train, 25% test, seed 0), pixels scaled to [0, 1], tensors shaped ``N x 1 x 8 x 8``.

A user data callable (``--data module:callable``) takes no argument and returns either
``(train_loader, test_loader)`` (any iterables of ``(inputs, labels)`` batches) or four tensors
``(x_train, y_train, x_test, y_test)``, which are batched here.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import attrs
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from nncore.errors import NncoreError

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.25
DEFAULT_BATCH_SIZE = 64


class DataError(NncoreError):
    """A data callable returned something the jobs cannot use."""


@attrs.frozen
class JobData:
    """The loaders a job trains and evaluates on, and the shape of one input (batch of one)."""

    train_loader: Iterable[Any]
    test_loader: Iterable[Any]
    input_shape: tuple[int, ...]
    description: str


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)`` of the digits data set (fixed split, [0, 1] pixels)."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise DataError("the built-in digits data needs scikit-learn: pip install scikit-learn") from exc
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target, test_size=DIGITS_TEST_FRACTION,
        random_state=DIGITS_SPLIT_SEED, stratify=digits.target,
    )

    def images(array: Any) -> torch.Tensor:
        return torch.tensor(array / 16.0, dtype=torch.float32).unsqueeze(1)

    def labels(array: Any) -> torch.Tensor:
        return torch.tensor(array, dtype=torch.long)

    return images(x_train), labels(y_train), images(x_test), labels(y_test)


def tensor_loaders(
    x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
    batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """Shuffled (seeded) train batches and ordered test batches of four tensors."""
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True, generator=generator)
    test = DataLoader(TensorDataset(x_test, y_test), batch_size=256)
    return train, test


def digits_data(batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0) -> JobData:
    """The built-in data: digits loaders and input shape ``(1, 1, 8, 8)``."""
    train, test = tensor_loaders(*digits_tensors(), batch_size=batch_size, seed=seed)
    return JobData(train, test, (1, 1, 8, 8), "digits (sklearn, 1347 train / 450 test)")


def data_from_callable(factory: Callable[[], Any], spec: str, batch_size: int = DEFAULT_BATCH_SIZE,
                       seed: int = 0) -> JobData:
    """Call a user data callable and check what it returned (see the module docstring).

    :raises DataError: one line naming ``spec`` and what was wrong.
    """
    try:
        result = factory()
    except Exception as exc:
        raise DataError(f"--data {spec!r}: calling it failed: {type(exc).__name__}: {exc}") from exc
    if isinstance(result, (tuple, list)) and len(result) == 4 and all(isinstance(t, torch.Tensor) for t in result):
        x_train, y_train, x_test, y_test = result
        if len(x_train) != len(y_train) or len(x_test) != len(y_test) or len(x_train) == 0 or len(x_test) == 0:
            raise DataError(f"--data {spec!r}: x and y tensors must be non-empty and of equal length")
        train, test = tensor_loaders(x_train, y_train, x_test, y_test, batch_size=batch_size, seed=seed)
        return JobData(train, test, (1, *x_train.shape[1:]), f"{spec} (tensors)")
    if isinstance(result, (tuple, list)) and len(result) == 2:
        train, test = result
        first = _first_batch(test, spec)
        return JobData(train, test, (1, *first[0].shape[1:]), f"{spec} (loaders)")
    raise DataError(
        f"--data {spec!r}: expected (train_loader, test_loader) or (x_train, y_train, x_test, y_test) tensors, "
        f"got {type(result).__name__}"
    )


def _first_batch(loader: Any, spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        batch = next(iter(loader))
    except Exception as exc:
        raise DataError(f"--data {spec!r}: cannot read a batch from the test loader: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[0], torch.Tensor)):
        raise DataError(f"--data {spec!r}: loader batches must be (inputs, labels) tensors")
    return batch[0], batch[1]


def load_job_data(spec: str | None, batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0) -> JobData:
    """The data named by ``--data module:callable``, or the built-in digits when ``spec`` is None."""
    if spec is None:
        return digits_data(batch_size, seed)
    from nncore.cli import load_object

    return data_from_callable(load_object(spec, "--data"), spec, batch_size, seed)


def reseed(loader: Iterable[Any], seed: int) -> None:
    """Restart the shuffling of a :class:`DataLoader` built here (seeded generator) at ``seed``, so
    that a job step sees the same batches whether or not earlier steps (a cached baseline) ran."""
    generator = getattr(loader, "generator", None)
    if isinstance(loader, DataLoader) and isinstance(generator, torch.Generator):
        generator.manual_seed(seed)


# -- the standard loops -------------------------------------------------------------------------


def train_one_epoch(
    model: nn.Module, loader: Iterable[Any], optimizer: torch.optim.Optimizer,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None, *,
    callback: Callable[[], None] | None = None, on_step: Callable[[], None] | None = None,
) -> float:
    """One pass over ``loader`` in train mode; returns the mean loss per batch.

    ``callback()`` runs between ``loss.backward()`` and ``optimizer.step()`` (NNI's trainer
    contract, e.g. ADMM's proximal gradient) and ``on_step()`` after each step (a compressor's ``step``).
    """
    criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
    model.train()
    total, batches = 0.0, 0
    for inputs, labels in loader:
        optimizer.zero_grad()
        loss = criterion(model(inputs), labels)
        loss.backward()
        if callback is not None:
            callback()
        optimizer.step()
        if on_step is not None:
            on_step()
        total += loss.item()
        batches += 1
    return total / batches if batches else math.nan


def train_epochs(
    model: nn.Module, loader: Iterable[Any], epochs: int, *, lr: float = 1e-2,
    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
    on_epoch: Callable[[int], None] | None = None, on_step: Callable[[], None] | None = None,
    progress: str | None = None, verbose: bool = True,
) -> None:
    """Train with cross-entropy for ``epochs`` epochs (a tqdm bar named ``progress`` showing the
    mean loss per batch of the last epoch).

    ``optimizer`` defaults to Adam at ``lr`` and ``scheduler`` to cosine annealing over ``epochs``
    (pass both to train with objects a compressor holds). ``on_epoch(epoch)`` runs before each
    epoch and ``on_step()`` after each optimizer step (a compressor's ``update_epoch`` / ``step``).
    """
    from tqdm.auto import tqdm

    if epochs <= 0:
        return
    if optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    bar = tqdm(range(epochs), desc=progress, disable=not verbose, leave=False, unit="epoch")
    for epoch in bar:
        if on_epoch is not None:
            on_epoch(epoch)
        loss = train_one_epoch(model, loader, optimizer, on_step=on_step)
        if scheduler is not None:
            scheduler.step()
        bar.set_postfix(loss=f"{loss:.3f}")
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, loader: Iterable[Any]) -> float:
    """Top-1 accuracy of ``model`` (in eval mode; its mode is restored) over ``loader``."""
    was_training = model.training
    model.eval()
    correct = count = 0
    try:
        for inputs, labels in loader:
            correct += int((model(inputs).argmax(dim=1) == labels).sum())
            count += len(labels)
    finally:
        model.train(was_training)
    return correct / count if count else math.nan
