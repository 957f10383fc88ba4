"""``nncore compress``: train (cached), prune, fine-tune, speed up, optionally quantize, report.

With no argument it runs on the built-in default (scikit-learn digits + :class:`~nncore.zoo.DigitsCNN`)
with dependency-aware L1 filter pruning at sparsity 0.5. ``--model module:callable`` and
``--data module:callable`` point it at your own model and data (see :mod:`nncore.data` for what
the data callable returns). Artifacts and ``report.json`` / ``report.md`` / plots go to ``--output``.
"""
from __future__ import annotations

import argparse
import copy
import inspect
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from nncore.artifacts import save_torch
from nncore.cli import build_model, read_config_list, text_table
from nncore.data import JobData, accuracy, load_job_data, train_epochs
from nncore.errors import NncoreError
from nncore.jobs.baseline import check_forward, dummy_input, trained_baseline
from nncore.jobs.measure import measure, measure_onnx
from nncore.jobs.options import (
    DEFAULT_FINETUNE_EPOCHS, DEFAULT_OUTPUT, DEFAULT_SPARSITY, add_common_arguments, check_budget_arguments,
    job_settings, say,
)
from nncore.jobs.plots import sparsity_plot
from nncore.jobs.pruning import default_config_list, prune_and_finetune, pruner_class
from nncore.jobs.report import comparison_rows, markdown_report, write_text
from nncore.speedup import ModelSpeedup


def speed_up(masked: nn.Module, masks: dict, data: JobData, notes: list[str], verbose: bool) -> tuple[nn.Module, bool]:
    """A really smaller copy of ``masked`` (``True``), or the masked model itself when speedup fails."""
    compressed = copy.deepcopy(masked)
    say(verbose, "speedup: shrinking the masked model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if not verbose else "default")
        try:
            ModelSpeedup(compressed, dummy_input(data), masks).speedup_model()
        except NncoreError as exc:
            notes.append(f"speedup failed ({exc}); the compressed figures are estimates from the masks")
            return masked, False
    return compressed, True


def quantize_int8(model: nn.Module, data: JobData, args: argparse.Namespace, output: Path, notes: list[str],
                  verbose: bool) -> dict[str, Any] | None:
    """QAT fine-tuning, then an int8 ONNX model measured with onnxruntime; ``None`` when unavailable."""
    try:
        from nncore.registry import get_compressor
        from nncore.speedup import export_int8_onnx

        quantizer_class = get_compressor(args.quantize)
    except (ImportError, NncoreError) as exc:
        notes.append(f"--quantize {args.quantize}: unavailable here ({type(exc).__name__}: {exc}); skipped")
        return None
    config_list = [{"quant_types": ["weight", "input", "output"], "quant_bits": {"weight": 8, "input": 8, "output": 8},
                    "op_types": ["Conv2d", "Linear"]}]
    parameters = inspect.signature(quantizer_class.__init__).parameters
    kwargs: dict[str, Any] = {}
    if "dummy_input" in parameters:
        kwargs["dummy_input"] = dummy_input(data)
    try:
        quantizer = quantizer_class(model, config_list, **kwargs)
        quantizer.compress()
        train_epochs(model, data.train_loader, max(1, args.finetune_epochs // 2), lr=args.lr / 10,
                     progress="QAT fine-tuning", on_epoch=quantizer.update_epoch, on_step=quantizer.step,
                     verbose=verbose)
        calibration = quantizer.export_model(str(output / "model_qat.pt"),
                                             calibration_path=str(output / "calibration.pt"))
        onnx_path = output / "model_int8.onnx"
        export_int8_onnx(quantizer.bound_model, calibration, str(onnx_path), list(data.input_shape))
    except Exception as exc:  # noqa: BLE001 - another engineer's module; the job reports and goes on
        notes.append(f"--quantize {args.quantize}: failed ({type(exc).__name__}: {exc}); skipped")
        return None
    return measure_onnx(onnx_path, data)


def run_sensitivity(model: nn.Module, data: JobData, algo: str, output: Path, notes: list[str], verbose: bool) -> None:
    """Sensitivity of every layer (test accuracy) to ``sensitivity.csv`` and ``sensitivity.png``."""
    from nncore.utils.sensitivity import SensitivityAnalysis

    analysis = SensitivityAnalysis(model, lambda: accuracy(model, data.test_loader), prune_type=algo, verbose=verbose)
    analysis.analysis()
    analysis.export(str(output / "sensitivity.csv"))
    try:
        analysis.plot(str(output / "sensitivity.png"))
    except NncoreError as exc:
        notes.append(f"sensitivity plot skipped: {exc}")


# -- the command -----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``nncore compress``."""
    add_common_arguments(parser)
    parser.add_argument("--sparsity", type=float, default=DEFAULT_SPARSITY,
                        help=f"uniform sparsity of the algorithm's default layers (default: {DEFAULT_SPARSITY})")
    parser.add_argument("--config", help="config_list JSON (or YAML) file; overrides --sparsity "
                                         "(e.g. the file written by nncore auto)")
    parser.add_argument("--finetune-epochs", type=int, default=DEFAULT_FINETUNE_EPOCHS, help="fine-tuning epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quantize", choices=["qat"], help="also quantize to int8 and export int8 ONNX")
    parser.add_argument("--sensitivity", action="store_true", help="also run a sensitivity analysis (CSV + PNG)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"artifacts and reports (default: ./{DEFAULT_OUTPUT})")


def run(args: argparse.Namespace) -> int:
    """Run ``nncore compress``; returns the exit status."""
    with job_settings(args):
        return compress_job(args)


def compress_job(args: argparse.Namespace) -> int:
    """The pipeline of ``nncore compress`` (see the module docstring)."""
    started = time.perf_counter()
    verbose = not args.quiet
    check_budget_arguments(args)
    config_list = read_config_list(args.config) if args.config else default_config_list(args.sparsity)
    pruner_class(args.algo)
    data = load_job_data(args.data, args.batch_size, args.seed)
    torch.manual_seed(args.seed)
    model = build_model(args.model)
    check_forward(model, data, args.model)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    say(verbose, f"nncore compress: {args.model or 'DigitsCNN'} on {data.description}, "
                 f"{args.algo} pruning, {'config ' + args.config if args.config else f'sparsity {args.sparsity}'}")
    trained_baseline(model, data, model_spec=args.model, data_spec=args.data, epochs=args.epochs, lr=args.lr,
                     seed=args.seed, use_cache=not args.no_cache, verbose=verbose)
    baseline = measure(model, data)
    save_torch(model.state_dict(), output / "model_baseline.pt")
    if args.sensitivity:
        run_sensitivity(model, data, args.algo, output, notes, verbose)

    masks, sparsity = prune_and_finetune(model, data, args, config_list, notes, verbose)
    save_torch(model.state_dict(), output / "model_pruned.pt")
    save_torch(masks, output / "masks.pt")
    compressed, really = speed_up(model, masks, data, notes, verbose)
    compressed_metrics = measure(compressed, data, masked=not really)
    artifacts = ["model_baseline.pt", "model_pruned.pt", "masks.pt"]
    if really:
        save_torch(compressed.state_dict(), output / "model_speedup.pt")
        artifacts.append("model_speedup.pt")
    int8 = quantize_int8(compressed, data, args, output, notes, verbose) if args.quantize else None
    if int8 is not None:
        artifacts += ["model_qat.pt", "calibration.pt", "model_int8.onnx"]
    report = {
        "model": args.model or "DigitsCNN", "data": data.description, "algo": args.algo, "config_list": config_list,
        "epochs": args.epochs, "finetune_epochs": args.finetune_epochs, "threads": torch.get_num_threads(),
        "baseline": baseline,
        "compressed": compressed_metrics, "speedup": really, "int8": int8, "layer_sparsity": sparsity,
        "artifacts": artifacts, "notes": notes,
    }
    try:
        sparsity_plot(output / "sparsity.png", sparsity)
        artifacts.append("sparsity.png")
    except NncoreError as exc:
        notes.append(f"plots skipped: {exc}")
    if args.sensitivity:
        artifacts += [name for name in ("sensitivity.csv", "sensitivity.png") if (output / name).is_file()]
    report["wall_time_s"] = round(time.perf_counter() - started, 2)
    write_text(output / "report.json", json.dumps(report, indent=2) + "\n")
    write_text(output / "report.md", markdown_report(report))
    if verbose:
        header, rows = comparison_rows(report)
        print(text_table(header, rows))
        print("per-layer sparsity: " + ", ".join(f"{n} {v:.0%}" for n, v in sparsity.items()))
        for note in notes:
            print(f"note: {note}")
        print(f"artifacts in {output}/: {', '.join(artifacts)}, report.json, report.md "
              f"({report['wall_time_s']:.1f} s)")
    return 0
