"""Auto (Optuna, per-layer sparsities) vs uniform L1 filter pruning at the same FLOPs budget, on digits.

    python benchmarks/auto_vs_uniform.py [--budget 0.5] [--trials 30] [--finetune-epochs 8] [--seeds 0 1 2]

The baseline DigitsCNN trains on 80% of the digits train split; the search scores each trial on the
other 20% (validation) after one epoch of fine-tuning, never on the test split. Both the uniform
config (the smallest uniform sparsity on a 0.01 grid that meets the budget) and the auto config are
then fine-tuned the same way (same epochs, same seeds) and measured on the test split; FLOPs are
counted on the really shrunk model (speedup).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch

from nncore.jobs.search import BudgetSearch, config_list_from, search_sparsities
from nncore.data import JobData, accuracy, digits_tensors, tensor_loaders, train_epochs
from nncore.cli import text_table
from nncore.jobs.baseline import trained_baseline
from nncore.jobs.cost import compressed_cost
from nncore.jobs.pruning import make_pruner
from nncore.utils import count_flops_params
from nncore.zoo import DigitsCNN

EXAMPLE = torch.zeros(1, 1, 8, 8)


def split_data(seed: int = 0) -> tuple[JobData, JobData]:
    """(train 80% + test, train 80% + validation 20%) as loaders; ``seed`` shuffles the train batches."""
    x_train, y_train, x_test, y_test = digits_tensors()
    cut = int(len(x_train) * 0.8)
    fit, val = (x_train[:cut], y_train[:cut]), (x_train[cut:], y_train[cut:])
    test_data = JobData(*tensor_loaders(*fit, x_test, y_test, seed=seed), (1, 1, 8, 8), "digits test")
    val_data = JobData(*tensor_loaders(*fit, *val, seed=seed), (1, 1, 8, 8), "digits validation")
    return test_data, val_data


def finetuned_accuracy(baseline: torch.nn.Module, config_list: list, epochs: int, seed: int) -> float:
    """Prune a copy of ``baseline``, fine-tune ``epochs`` epochs (masks kept, batches shuffled by
    ``seed``), test accuracy."""
    data, _ = split_data(seed)
    model = copy.deepcopy(baseline)
    pruner = make_pruner("l1", model, config_list, EXAMPLE)
    pruner.compress()
    torch.manual_seed(seed)
    train_epochs(model, data.train_loader, epochs, lr=2.5e-3, verbose=False)
    pruner.unwrap_model()
    return accuracy(model, data.test_loader)


def flops_ratio(baseline: torch.nn.Module, config_list: list) -> float:
    model = copy.deepcopy(baseline)
    pruner = make_pruner("l1", model, config_list, EXAMPLE)
    pruner.compress()
    masks = pruner.masks()
    pruner.unwrap_model()
    flops, _, exact = compressed_cost(baseline, masks, EXAMPLE)
    assert exact, "speedup is needed for exact FLOPs"
    return flops / count_flops_params(baseline, EXAMPLE.shape, verbose=False)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--finetune-epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)  # tiny model: one thread is fastest, and steady on a shared CPU
    started = time.perf_counter()
    test_data, val_data = split_data()
    torch.manual_seed(0)
    baseline = trained_baseline(DigitsCNN(), test_data, model_spec=None, data_spec="digits-train80", epochs=20,
                                lr=1e-2, seed=0, verbose=False)

    uniform_search = BudgetSearch(baseline, EXAMPLE, "l1", args.budget, "flops", max_sparsity=0.9, step=0.01)
    uniform = config_list_from(uniform_search.uniform_within_budget())

    def finetune(model: torch.nn.Module) -> None:
        torch.manual_seed(0)
        train_epochs(model, val_data.train_loader, 1, lr=2.5e-3, verbose=False)

    result = search_sparsities(baseline, lambda m: accuracy(m, val_data.test_loader), EXAMPLE, budget=args.budget,
                               n_trials=args.trials, sampler="tpe", seed=0, finetune=finetune, verbose=False)
    rows = [["baseline (unpruned)", f"{accuracy(baseline, test_data.test_loader) * 100:.2f}", "-", "1.000", "-"]]
    for name, config_list in (("uniform L1", uniform), ("auto (TPE)", result.config_list)):
        scores = [finetuned_accuracy(baseline, config_list, args.finetune_epochs, s) for s in args.seeds]
        sparsities = " ".join(f"{e['op_names'][0]}={e['sparsity']:.2f}" for e in config_list)
        rows.append([name, f"{statistics.mean(scores) * 100:.2f}", f"{min(scores) * 100:.2f}-{max(scores) * 100:.2f}",
                     f"{flops_ratio(baseline, config_list):.3f}", sparsities])
    print(f"digits, DigitsCNN, FLOPs budget {args.budget}, {args.trials} trials, fine-tune {args.finetune_epochs} "
          f"epochs, seeds {args.seeds}; {result.completed} trials within budget, {result.pruned} over")
    print(text_table(["config", "test acc % (mean)", "min-max", "FLOPs ratio", "per-layer sparsity"], rows))
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
