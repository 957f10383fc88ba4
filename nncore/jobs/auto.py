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
from nncore.jobs.options import budget_of, check_auto_arguments, job_settings, say
from nncore.jobs.pruning import check_pruner, pruner_class
from nncore.jobs.report import write_text
from nncore.jobs.search import search_sparsities
from nncore.jobs.supplies import declared


def run(args: argparse.Namespace) -> int:
    """Run ``nncore auto`` (one worker); returns the exit status."""
    with job_settings(args):
        require_optuna().logging.set_verbosity(optuna.logging.ERROR if args.quiet else optuna.logging.WARNING)
        return auto_job(args)


def check_algorithm(args: argparse.Namespace) -> None:
    """One line when ``--algo`` cannot be searched: it must take one ``sparsity`` per layer."""
    cls = pruner_class(args.algo)
    if declared(cls, "job_config") != {"sparsity": "sparsity"}:
        raise CommandLineError(f"--algo {args.algo!r}: nncore auto searches one 'sparsity' per layer, which "
                               f"{cls.__name__}'s config_list does not take")


def auto_job(args: argparse.Namespace) -> int:
    """Baseline (cached), then this worker's trials, then the study's best config_list to ``--output``."""
    verbose = not args.quiet
    check_auto_arguments(args)
    check_algorithm(args)
    metric, budget = budget_of(args)
    data = load_job_data(args.data, args.batch_size, 0)
    torch.manual_seed(0)
    model = build_model(args.model)
    check_forward(model, data, args.model)
    check_pruner(args.algo, model, [{"sparsity": args.max_sparsity, "op_types": ["default"]}], one_shot=True)
    trained_baseline(model, data, model_spec=args.model, data_spec=args.data, epochs=args.epochs, lr=args.lr,
                     seed=0, use_cache=not args.no_cache, verbose=verbose)
    baseline_accuracy = accuracy(model, data.test_loader)

    def finetune(pruned: nn.Module) -> None:
        torch.manual_seed(0)
        train_epochs(pruned, data.train_loader, args.finetune_epochs, lr=args.lr / 4, verbose=False)

    say(verbose, f"search: {args.sampler} sampler, {args.finetune_epochs} fine-tuning epoch(s) per trial")
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
