"""``nncore auto``: one worker of the per-layer sparsity search (see :mod:`nncore.jobs.search`)."""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn as nn

from nncore.cli import CommandLineError, build_model, text_table
from nncore.data import accuracy, load_job_data, train_epochs
from nncore.jobs.annealing import optuna, require_optuna
from nncore.jobs.baseline import check_forward, dummy_input, trained_baseline
from nncore.jobs.options import add_common_arguments, check_budget_arguments, job_settings, say
from nncore.jobs.pruning import pruner_class
from nncore.jobs.report import write_text
from nncore.jobs.search import SAMPLERS, search_sparsities

DEFAULT_STORAGE = "sqlite:///nncore-auto.db"
DEFAULT_STUDY = "nncore-auto"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``nncore auto``."""
    add_common_arguments(parser)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--flops-budget", type=float, metavar="RATIO",
                        help="largest FLOPs ratio to the baseline (default: 0.5)")
    budget.add_argument("--params-budget", type=float, metavar="RATIO", help="largest params ratio to the baseline")
    parser.add_argument("--trials", type=int, default=20, help="trials this worker runs (default: 20)")
    parser.add_argument("--storage", default=DEFAULT_STORAGE,
                        help=f"Optuna storage URL shared by all workers (default: {DEFAULT_STORAGE})")
    parser.add_argument("--study-name", default=DEFAULT_STUDY, help=f"study to create or join (default: {DEFAULT_STUDY})")
    parser.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="search algorithm (default: tpe)")
    parser.add_argument("--max-sparsity", type=float, default=0.9)
    parser.add_argument("--finetune-epochs", type=int, default=1, help="fine-tuning epochs per trial (default: 1)")
    parser.add_argument("--seed", type=int, help="sampler seed (default: random; give workers different seeds)")
    parser.add_argument("--output", default="auto_config.json",
                        help="where the best config_list is written (default: ./auto_config.json)")


def run(args: argparse.Namespace) -> int:
    """Run ``nncore auto`` (one worker); returns the exit status."""
    with job_settings(args):
        require_optuna().logging.set_verbosity(optuna.logging.ERROR if args.quiet else optuna.logging.WARNING)
        return auto_job(args)


def auto_job(args: argparse.Namespace) -> int:
    """Baseline (cached), then this worker's trials, then the study's best config_list to ``--output``."""
    verbose = not args.quiet
    check_budget_arguments(args)
    if args.trials < 1:
        raise CommandLineError(f"--trials must be >= 1, got {args.trials}")
    metric, budget = ("params", args.params_budget) if args.params_budget is not None else ("flops", args.flops_budget or 0.5)
    pruner_class(args.algo)
    data = load_job_data(args.data, args.batch_size, 0)
    torch.manual_seed(0)
    model = build_model(args.model)
    check_forward(model, data, args.model)
    trained_baseline(model, data, model_spec=args.model, data_spec=args.data, epochs=args.epochs, lr=args.lr,
                     seed=0, use_cache=not args.no_cache, verbose=verbose)
    baseline_accuracy = accuracy(model, data.test_loader)

    def finetune(pruned: nn.Module) -> None:
        torch.manual_seed(0)
        train_epochs(pruned, data.train_loader, args.finetune_epochs, lr=args.lr / 4, verbose=False)

    say(verbose, f"nncore auto: {args.trials} trial(s) on study {args.study_name!r} at {args.storage}, "
                 f"{metric} budget {budget}, {args.algo} pruning, {args.sampler} sampler")
    result = search_sparsities(
        model, lambda pruned: accuracy(pruned, data.test_loader), dummy_input(data), budget=budget, metric=metric,
        algo=args.algo, n_trials=args.trials, storage=args.storage, study_name=args.study_name,
        sampler=args.sampler, seed=args.seed, max_sparsity=args.max_sparsity,
        finetune=finetune if args.finetune_epochs else None, verbose=verbose,
    )
    write_text(args.output, json.dumps(result.config_list, indent=2) + "\n")
    if verbose:
        rows = [["baseline accuracy", f"{baseline_accuracy * 100:.2f}%"],
                [f"best trial (#{result.trial_number}) accuracy", f"{result.value * 100:.2f}%"],
                ["FLOPs ratio", f"{result.flops_ratio:.3f}"], ["params ratio", f"{result.params_ratio:.3f}"],
                ["trials in study", f"{result.completed} completed, {result.pruned} over budget"]]
        rows += [[f"sparsity {entry['op_names'][0]}", f"{entry['sparsity']:.2f}"] for entry in result.config_list]
        print(text_table(["", "value"], rows))
        print(f"best config_list written to {args.output} (use: nncore compress --algo {args.algo} --config {args.output})")
    return 0
