"""Options, defaults and settings shared by ``nncore compress`` and ``nncore auto``."""
from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from typing import Iterator

import torch

from nncore.cli import CommandLineError

DEFAULT_ALGO = "l1"
DEFAULT_SPARSITY = 0.5
DEFAULT_EPOCHS = 20
DEFAULT_FINETUNE_EPOCHS = 15
DEFAULT_OUTPUT = "nncore-output"


def say(verbose: bool, message: str) -> None:
    """Print a progress line to stderr unless the job is quiet."""
    if verbose:
        print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def job_settings(args: argparse.Namespace) -> Iterator[None]:
    """Apply ``--threads`` and ``--quiet`` (warnings ignored) for the duration of a job."""
    threads = torch.get_num_threads()
    if args.threads < 1:
        raise CommandLineError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    try:
        with warnings.catch_warnings():
            if args.quiet:
                warnings.simplefilter("ignore")
            yield
    finally:
        torch.set_num_threads(threads)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``nncore compress`` and ``nncore auto``."""
    parser.add_argument("--model", help="module:callable returning the model (default: built-in DigitsCNN)")
    parser.add_argument("--data", help="module:callable returning (train_loader, test_loader) or "
                                       "(x_train, y_train, x_test, y_test) tensors (default: sklearn digits)")
    parser.add_argument("--algo", default=DEFAULT_ALGO, help=f"pruner registry name (default: {DEFAULT_ALGO})")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="baseline training epochs (cached)")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate of baseline training")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: 1, the fastest for small models on shared CPUs)")
    parser.add_argument("--no-cache", action="store_true", help="retrain the baseline even if it is cached")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")


def check_budget_arguments(args: argparse.Namespace) -> None:
    """One-line errors for negative epochs, a bad batch size or a bad sparsity."""
    for option in ("epochs", "finetune_epochs"):
        if getattr(args, option) < 0:
            raise CommandLineError(f"--{option.replace('_', '-')} must be >= 0, got {getattr(args, option)}")
    if args.batch_size < 1:
        raise CommandLineError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0 <= getattr(args, "sparsity", 0) < 1:
        raise CommandLineError(f"--sparsity must be in [0, 1), got {args.sparsity}")
