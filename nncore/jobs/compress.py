"""``nncore compress``: train (cached), prune, fine-tune, speed up, optionally quantize, report.

With no argument it runs on the built-in default (scikit-learn digits + :class:`~nncore.zoo.DigitsCNN`)
with dependency-aware L1 filter pruning at sparsity 0.5. ``--model module:callable`` and
``--data module:callable`` point it at your own model and data (see :mod:`nncore.data` for what
the data callable returns). Every input is checked before any training. Artifacts,
``report.json`` / ``report.md`` and the plots go to ``--output``.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn as nn

from nncore.artifacts import save_torch
from nncore.cli import build_model, read_config_list, text_table
from nncore.data import JobData, accuracy, load_job_data, reseed
from nncore.errors import ArtifactError, NncoreError
from nncore.jobs.baseline import check_forward, trained_baseline
from nncore.jobs.cost import weight_reduction
from nncore.jobs.measure import add_latencies, model_figures, onnx_runner, torch_runner
from nncore.jobs.options import DEFAULT_ALGO, check_compress_arguments, job_settings, say
from nncore.jobs.output import clear_previous_run, files_in
from nncore.jobs.plots import comparison_plot, sparsity_plot
from nncore.jobs.pruning import (
    check_construction, check_pruner, is_one_shot, one_shot_arguments, prune_and_finetune, pruner_class,
)
from nncore.jobs.quantize import check_quantizer, int8_figures, quantize_int8
from nncore.jobs.report import columns_of, comparison_rows, latency_note, markdown_report, write_text
from nncore.jobs.supplies import JobSupplies, job_config_list
from nncore.speedup import ModelSpeedup, save_pruned


@attrs.frozen
class Setup:
    """Everything ``nncore compress`` checked before training."""

    model: nn.Module
    data: JobData
    config_list: Any
    output: Path
    quantizer: type | None
    sensitivity_algo: str | None


def prepare(args: argparse.Namespace, verbose: bool) -> Setup:
    """Check every input (budgets, output folder, quantizer, algorithm, config, data, model) and
    build model and data; nothing is trained or written but the output folder."""
    check_compress_arguments(args)
    output = Path(args.output)
    cls = pruner_class(args.algo)
    config_list = (read_config_list(args.config) if args.config
                   else job_config_list(cls, args.sparsity, args.finetune_epochs))
    data = load_job_data(args.data, args.batch_size, args.seed)
    torch.manual_seed(args.seed)
    model = build_model(args.model)
    check_forward(model, data, args.model)
    check_pruner(args.algo, model, config_list, config_file=args.config,
                 sparsity=None if args.config else args.sparsity)
    check_construction(args.algo, model, config_list, lambda probe: job_supplies(probe, data, args, output, False))
    quantizer = check_quantizer(args.quantize, model) if args.quantize else None
    sensitivity_algo = None
    if args.sensitivity:  # one fresh pruner per layer and sparsity: a one-shot pruner
        sensitivity_algo = args.algo if is_one_shot(cls) else DEFAULT_ALGO
        check_pruner(sensitivity_algo, model, job_config_list(pruner_class(sensitivity_algo), 0.5, 1), one_shot=True)
    parameters = sum(p.numel() for p in model.parameters())
    say(verbose, f"checked: {type(model).__name__} ({parameters:,} parameters) on {data.description}")
    return Setup(model, data, config_list, output, quantizer, sensitivity_algo)


def job_supplies(model: nn.Module, data: JobData, args: argparse.Namespace, output: Path, verbose: bool) -> JobSupplies:
    """What the job gives the pruner of ``model`` (fine-tuning at a quarter of ``--lr``)."""
    return JobSupplies(model, data, lr=args.lr / 4, output=output, seed=args.seed, verbose=verbose,
                       sparsity=args.sparsity, finetune_epochs=args.finetune_epochs)


def speed_up(masked: nn.Module, masks: dict, data: JobData, notes: list[str], verbose: bool) -> tuple[nn.Module, bool]:
    """A really smaller copy of ``masked`` (``True``), or the masked model itself when speedup fails."""
    compressed = copy.deepcopy(masked)
    say(verbose, "speedup: shrinking the masked model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if not verbose else "default")
        try:
            ModelSpeedup(compressed, torch.zeros(data.input_shape), masks).speedup_model()
        except NncoreError as exc:
            notes.append(f"speedup failed ({exc}); the compressed figures are estimates from the masks")
            return masked, False
    return compressed, True


def save_speedup(compressed: nn.Module, path: Path, notes: list[str]) -> None:
    """``model_speedup.pt`` by :func:`~nncore.speedup.save_pruned`: ``load_pruned(Model(), path)``
    rebuilds it from a fresh model; a note instead when speedup removed nothing."""
    try:
        save_pruned(compressed, path)
    except ArtifactError:
        notes.append("speedup removed no weight (the pruning is not structured): no model_speedup.pt, "
                     "model_pruned.pt is the compressed model")


def run_sensitivity(model: nn.Module, data: JobData, algo: str, output: Path, notes: list[str], verbose: bool) -> None:
    """Sensitivity of every layer (test accuracy) to ``sensitivity.csv`` and ``sensitivity.png``."""
    from nncore.utils.sensitivity import SensitivityAnalysis

    say(verbose, f"sensitivity: pruning one layer at a time with {algo}")
    arguments = one_shot_arguments(pruner_class(algo), torch.zeros(data.input_shape))
    analysis = SensitivityAnalysis(model, lambda: accuracy(model, data.test_loader), prune_type=algo, verbose=verbose,
                                   pruner_kwargs=arguments)
    analysis.analysis()
    analysis.export(str(output / "sensitivity.csv"))
    try:
        analysis.plot(str(output / "sensitivity.png"), metric_name="test accuracy")
    except NncoreError as exc:
        notes.append(f"sensitivity plot skipped: {exc}")


def run(args: argparse.Namespace) -> int:
    """Run ``nncore compress``; returns the exit status."""
    with job_settings(args):
        return compress_job(args)


def compress_job(args: argparse.Namespace) -> int:
    """The pipeline of ``nncore compress`` (see the module docstring)."""
    started = time.perf_counter()
    verbose = not args.quiet
    setup = prepare(args, verbose)
    model, data, output = setup.model, setup.data, setup.output
    removed = clear_previous_run(output)
    if removed:
        say(verbose, f"output: removed {len(removed)} file(s) of the previous run in {output}/")
    user_files = files_in(output)
    notes: list[str] = []
    trained_baseline(model, data, model_spec=args.model, data_spec=args.data, epochs=args.epochs, lr=args.lr,
                     seed=args.seed, use_cache=not args.no_cache, verbose=verbose)
    baseline_model = copy.deepcopy(model).eval()
    figures = {"baseline": model_figures(model, data)}
    runners = {"baseline": lambda batch: torch_runner(baseline_model, batch)}
    save_torch(model.state_dict(), output / "model_baseline.pt")
    if setup.sensitivity_algo is not None:
        if setup.sensitivity_algo != args.algo:
            notes.append(f"sensitivity analysed with {setup.sensitivity_algo}: {args.algo} is not a one-shot pruner")
        run_sensitivity(model, data, setup.sensitivity_algo, output, notes, verbose)

    torch.manual_seed(args.seed)
    reseed(data.train_loader, args.seed)
    supplies = job_supplies(model, data, args, output, verbose)
    masks, sparsity = prune_and_finetune(args.algo, model, setup.config_list, supplies, args.finetune_epochs, verbose)
    save_torch(model.state_dict(), output / "model_pruned.pt")
    save_torch(masks, output / "masks.pt")
    compressed, really = speed_up(model, masks, data, notes, verbose)
    figures["compressed"] = model_figures(compressed, data, masked=not really)
    runners["compressed"] = lambda batch: torch_runner(compressed, batch)
    if really:
        save_speedup(compressed, output / "model_speedup.pt", notes)
    if setup.quantizer is not None:
        try:
            onnx_path = quantize_int8(setup.quantizer, compressed, data, epochs=max(1, args.finetune_epochs // 2),
                                      lr=args.lr / 10, output=output, seed=args.seed, verbose=verbose)
            figures["int8"], session = int8_figures(onnx_path, data, torch.get_num_threads())
            runners["int8"] = lambda batch: onnx_runner(session, batch)
        except Exception as exc:  # noqa: BLE001 - the pruning results stand; the report says what failed
            notes.append(f"--quantize {args.quantize}: failed ({type(exc).__name__}: {exc}); skipped")
    say(verbose, f"measuring: latency of {', '.join(runners)}, interleaved")
    add_latencies(figures, runners, data)

    report = {
        "model": args.model or "DigitsCNN", "data": data.description, "algo": args.algo,
        "config_list": setup.config_list, "epochs": args.epochs, "finetune_epochs": args.finetune_epochs,
        "threads": torch.get_num_threads(), "baseline": figures["baseline"], "compressed": figures["compressed"],
        "speedup": really, "int8": figures.get("int8"), "layer_sparsity": sparsity,
        "weight_reduction": weight_reduction(model, compressed, really), "notes": notes,
    }
    write_plots(report, output, notes)
    report["artifacts"] = sorted(files_in(output) - user_files) + ["report.json", "report.md"]
    report["wall_time_s"] = round(time.perf_counter() - started, 2)
    write_text(output / "report.json", json.dumps(report, indent=2) + "\n")
    write_text(output / "report.md", markdown_report(report))
    if verbose:
        print_summary(report, output)
    return 0


def write_plots(report: dict[str, Any], output: Path, notes: list[str]) -> None:
    """``sparsity.png`` and ``comparison.png``; a note instead when they cannot be drawn."""
    try:
        sparsity_plot(output / "sparsity.png", report["weight_reduction"], report["speedup"])
        comparison_plot(output / "comparison.png", columns_of(report), report["threads"])
    except NncoreError as exc:
        notes.append(f"plots skipped: {exc}")


def print_summary(report: dict[str, Any], output: Path) -> None:
    """The before/after table, the per-layer figures, the notes and the files, on stdout."""
    header, rows = comparison_rows(report)
    print(text_table(header, rows))
    print(latency_note(report))
    print("weights removed per layer: " + ", ".join(f"{name} {value['removed']:.0%}"
                                                     for name, value in report["weight_reduction"].items()))
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"files in {output}/: {', '.join(report['artifacts'])} ({report['wall_time_s']:.1f} s)")
