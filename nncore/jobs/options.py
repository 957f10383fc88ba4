"""The options of ``nncore compress`` and ``nncore auto``, their checks and the jobs' settings.

This module imports no PyTorch, so that ``nncore --help`` answers at once and a job prints its
first line before the heavy imports.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from pathlib import Path
from typing import Iterator

from nncore.cli import CommandLineError

DEFAULT_ALGO = "l1"
DEFAULT_SPARSITY = 0.5
DEFAULT_EPOCHS = 20
DEFAULT_FINETUNE_EPOCHS = 15
DEFAULT_LR = 1e-2
DEFAULT_BATCH_SIZE = 64
DEFAULT_OUTPUT = "nncore-output"
QUANTIZERS = ("qat", "ptq")
DEFAULT_BUDGET = 0.5
DEFAULT_TRIALS = 20
DEFAULT_STORAGE = "sqlite:///nncore-auto.db"
DEFAULT_STUDY = "nncore-auto"
DEFAULT_AUTO_OUTPUT = "auto_config.json"
SAMPLERS = ("tpe", "random", "anneal")


def say(verbose: bool, message: str) -> None:
    """Print a progress line to stderr unless the job is quiet."""
    if verbose:
        print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def job_settings(args: argparse.Namespace) -> Iterator[None]:
    """Apply ``--threads`` and ``--quiet`` (warnings ignored) for the duration of a job."""
    import torch

    if args.threads < 1:
        raise CommandLineError(f"--threads must be >= 1, got {args.threads}")
    threads = torch.get_num_threads()
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
    parser.add_argument("--model", help="module:callable returning the model (default: the built-in DigitsCNN)")
    parser.add_argument("--data", help="module:callable returning (train_loader, test_loader) or "
                                       "(x_train, y_train, x_test, y_test) tensors (default: scikit-learn digits)")
    parser.add_argument("--algo", default=DEFAULT_ALGO, help="pruner registry name (nncore list shows them)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="baseline training epochs (cached)")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR,
                        help="Adam learning rate of baseline training (fine-tuning uses a quarter of it)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="training batch size")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is the fastest for small models on shared CPUs)")
    parser.add_argument("--no-cache", action="store_true", help="retrain the baseline even if it is cached")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")


def add_compress_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``nncore compress``."""
    add_common_arguments(parser)
    parser.add_argument("--sparsity", type=float, default=DEFAULT_SPARSITY,
                        help="uniform sparsity of the algorithm's default layers")
    parser.add_argument("--config", help="config_list JSON (or YAML) file; replaces --sparsity "
                                         "(e.g. the file written by nncore auto)")
    parser.add_argument("--finetune-epochs", type=int, default=DEFAULT_FINETUNE_EPOCHS, help="fine-tuning epochs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model, the data order and the algorithm")
    parser.add_argument("--quantize", choices=QUANTIZERS,
                        help="then quantize to int8 (qat: quantization-aware fine-tuning, ptq: post-training "
                             "calibration) and export an int8 ONNX model, measured in ONNX Runtime")
    parser.add_argument("--sensitivity", action="store_true", help="also run a sensitivity analysis (CSV + PNG)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="folder of the artifacts and reports")


def add_auto_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``nncore auto``."""
    add_common_arguments(parser)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--flops-budget", type=float, metavar="RATIO",
                        help=f"largest FLOPs ratio to the baseline, in (0, 1) (default: {DEFAULT_BUDGET})")
    budget.add_argument("--params-budget", type=float, metavar="RATIO",
                        help="largest params ratio to the baseline, in (0, 1)")
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help="trials this worker runs")
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help="Optuna storage URL shared by all workers")
    parser.add_argument("--study-name", default=DEFAULT_STUDY, help="study to create or join")
    parser.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="search algorithm")
    parser.add_argument("--max-sparsity", type=float, default=0.9, help="the largest sparsity a layer may get")
    parser.add_argument("--finetune-epochs", type=int, default=1, help="fine-tuning epochs per trial")
    parser.add_argument("--seed", type=int, help="sampler seed (default: random; give workers different seeds)")
    parser.add_argument("--output", default=DEFAULT_AUTO_OUTPUT, help="where the best config_list is written")


def check_budget_arguments(args: argparse.Namespace) -> None:
    """One-line errors for negative epochs or a bad batch size."""
    for option in ("epochs", "finetune_epochs"):
        if getattr(args, option) < 0:
            raise CommandLineError(f"--{option.replace('_', '-')} must be >= 0, got {getattr(args, option)}")
    if args.batch_size < 1:
        raise CommandLineError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.lr <= 0:
        raise CommandLineError(f"--lr must be > 0, got {args.lr}")
    if args.threads < 1:
        raise CommandLineError(f"--threads must be >= 1, got {args.threads}")


def check_compress_arguments(args: argparse.Namespace) -> None:
    """The checks of ``nncore compress``'s options that need no PyTorch (run before importing it)."""
    check_budget_arguments(args)
    check_output_folder(args.output)


def check_auto_arguments(args: argparse.Namespace) -> None:
    """The checks of ``nncore auto``'s options that need no PyTorch (run before importing it)."""
    check_budget_arguments(args)
    if args.trials < 1:
        raise CommandLineError(f"--trials must be >= 1, got {args.trials}")
    metric, budget = budget_of(args)
    if not 0 < budget < 1:
        raise CommandLineError(f"--{metric}-budget must be a ratio in (0, 1), got {budget}")
    if not 0 < args.max_sparsity < 1:
        raise CommandLineError(f"--max-sparsity must be in (0, 1), got {args.max_sparsity}")
    if "://" not in args.storage:
        raise CommandLineError(f"--storage {args.storage!r} is not a database URL, e.g. {DEFAULT_STORAGE}")
    check_output_file(args.output)


def check_output_folder(path: str) -> Path:
    """``--output`` as a folder that exists now (created if missing), or a one-line error."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise CommandLineError(f"--output {path!r} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandLineError(f"--output {path!r}: cannot create the folder: {exc.strerror or exc}") from exc
    return folder


def check_output_file(path: str) -> Path:
    """``--output`` as a file whose folder exists (created if missing), or a one-line error."""
    file = Path(path)
    if file.is_dir():
        raise CommandLineError(f"--output {path!r} is a directory; give a file name, e.g. {DEFAULT_AUTO_OUTPUT}")
    check_output_folder(str(file.parent))
    return file


def describe_compress(args: argparse.Namespace) -> str:
    """The first line ``nncore compress`` prints: what it is about to do."""
    pruning = f"config {args.config}" if args.config else f"sparsity {args.sparsity}"
    quantize = f", then {args.quantize} int8" if args.quantize else ""
    return (f"{args.algo} pruning ({pruning}){quantize} of {args.model or 'DigitsCNN'} on "
            f"{args.data or 'digits'}, results in {args.output}/")


def describe_auto(args: argparse.Namespace) -> str:
    """The first line ``nncore auto`` prints: what it is about to do."""
    metric, budget = budget_of(args)
    return (f"{args.trials} trial(s) of {args.algo} pruning under a {metric} budget of {budget} on "
            f"{args.model or 'DigitsCNN'}, study {args.study_name!r} at {args.storage}")


def budget_of(args: argparse.Namespace) -> tuple[str, float]:
    """``('params', --params-budget)`` or ``('flops', --flops-budget or the default)``."""
    if args.params_budget is not None:
        return "params", args.params_budget
    return "flops", DEFAULT_BUDGET if args.flops_budget is None else args.flops_budget
