"""``nncore compress``: train (cached), prune, fine-tune, speed up, optionally quantize, report.

With no argument it runs on the built-in default (scikit-learn digits + :class:`~nncore.zoo.DigitsCNN`)
with dependency-aware L1 filter pruning at sparsity 0.5. ``--model module:callable`` and
``--data module:callable`` point it at your own model and data (see :mod:`nncore.data` for what
the data callable returns). Artifacts and ``report.json`` / ``report.md`` / plots go to ``--output``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import importlib.util
import inspect
import io
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn as nn

from nncore.artifacts import atomic_write, load_torch, save_torch
from nncore.cli import CommandLineError, build_model, read_config_list, text_table
from nncore.data import JobData, accuracy, load_job_data, train_epochs
from nncore.errors import NncoreError
from nncore.speedup import ModelSpeedup
from nncore.speedup.masks import apply_masks

DEFAULT_ALGO = "l1"
DEFAULT_SPARSITY = 0.5
DEFAULT_EPOCHS = 20
DEFAULT_FINETUNE_EPOCHS = 15
DEFAULT_OUTPUT = "nncore-output"
LATENCY_RUNS = 100
LATENCY_BATCH = 256


# -- small shared helpers (also used by nncore.auto) ----------------------------------------------


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


def cache_dir() -> Path:
    """Where trained baselines are kept: ``$NNCORE_CACHE`` or ``~/.cache/nncore``."""
    return Path(os.environ.get("NNCORE_CACHE") or Path.home() / ".cache" / "nncore")


def baseline_key(model: nn.Module, model_spec: str | None, data_spec: str | None, epochs: int, lr: float,
                 seed: int, batch_size: int) -> str:
    """A hash of what determines a trained baseline: model (spec, class, shapes), data, budget, seed."""
    shapes = [[name, list(value.shape)] for name, value in model.state_dict().items()]
    recipe = {"model": model_spec or "nncore.zoo:DigitsCNN", "class": type(model).__qualname__, "shapes": shapes,
              "data": data_spec or "digits", "epochs": epochs, "lr": lr, "seed": seed,
              "batch_size": batch_size}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:20]


def trained_baseline(model: nn.Module, data: JobData, *, model_spec: str | None, data_spec: str | None, epochs: int,
                     lr: float, seed: int, use_cache: bool = True, verbose: bool = True) -> nn.Module:
    """Train ``model`` in place for ``epochs`` epochs, or load the cached result of the same recipe."""
    batch_size = getattr(data.train_loader, "batch_size", None) or 0
    path = cache_dir() / f"baseline-{baseline_key(model, model_spec, data_spec, epochs, lr, seed, batch_size)}.pt"
    if use_cache and path.is_file():
        try:
            model.load_state_dict(load_torch(path, "cached baseline"))
            say(verbose, f"baseline: loaded from cache {path}")
            model.eval()
            return model
        except (NncoreError, RuntimeError) as exc:
            say(verbose, f"baseline: ignoring unreadable cache entry ({exc})")
    torch.manual_seed(seed)
    train_epochs(model, data.train_loader, epochs, lr=lr, progress="baseline training", verbose=verbose)
    if use_cache:
        save_torch(model.state_dict(), path)
    return model


def dummy_input(data: JobData) -> torch.Tensor:
    """A batch of one zero input of the data's shape."""
    return torch.zeros(data.input_shape)


def check_forward(model: nn.Module, data: JobData, model_spec: str | None) -> None:
    """Fail with one line when the model cannot run on the data's inputs."""
    try:
        with torch.no_grad():
            model.eval()(dummy_input(data))
    except Exception as exc:
        raise CommandLineError(f"--model {model_spec or 'DigitsCNN'!r}: forward on an input of shape "
                               f"{tuple(data.input_shape)} failed: {type(exc).__name__}: {exc}") from exc


def pruner_class(algo: str) -> type:
    """The registered pruner class ``algo``, or a one-line error (unknown name, or not a pruner)."""
    from nncore.registry import get_compressor

    found = get_compressor(algo)
    if getattr(found, "kind", "") != "pruner":
        raise CommandLineError(f"--algo {algo!r} is a {found.kind or 'compressor'}, not a pruner "
                               "(quantize with --quantize)")
    return found


def make_pruner(algo: str, model: nn.Module, config_list: Any, example_input: torch.Tensor,
                notes: list[str] | None = None) -> Any:
    """Build the pruner ``algo`` on ``model``: dependency-aware when the algorithm supports it.

    :raises CommandLineError: ``algo`` is not a pruner, or needs constructor arguments a job cannot give.
    """
    found = pruner_class(algo)
    parameters = inspect.signature(found.__init__).parameters
    kwargs: dict[str, Any] = {}
    if "dummy_input" in parameters:
        kwargs["dummy_input"] = example_input
    if "dependency_aware" in parameters:
        if importlib.util.find_spec("nncore.utils.dependency") is not None:
            kwargs["dependency_aware"] = True
        elif notes is not None:
            notes.append("dependency-aware pruning unavailable (nncore.utils.dependency not installed)")
    try:
        return found(model, config_list, **kwargs)
    except TypeError as exc:
        raise CommandLineError(f"--algo {algo!r} cannot be built by a job: {exc}") from exc


def effective_flops_params(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """FLOPs and params of a *masked* model as if the zero channels were removed (an estimate).

    Each convolution / linear layer counts only its output channels with a non-zero weight and its
    input channels that are not identically zero on a seeded random batch shaped like
    ``example_input``; a normalisation layer counts only channels whose weight or bias is
    non-zero; other parameters count whole. Used when speedup is unavailable.
    """
    from nncore.utils import count_flops_params

    live_inputs: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            def hook(module: nn.Module, inputs: tuple, _name: str = name) -> None:
                x = inputs[0]
                channel_dim = x.dim() - 1 if isinstance(module, nn.Linear) else 1
                other = [d for d in range(x.dim()) if d != channel_dim]
                live_inputs[_name] = int((x.abs().amax(dim=other) > 0).sum()) if other else int((x != 0).sum())
            handles.append(module.register_forward_pre_hook(hook))
    try:
        probe = torch.randn((8, *example_input.shape[1:]), generator=torch.Generator().manual_seed(0))
        _, _, results = count_flops_params(model, (probe,), verbose=False)
    finally:
        for handle in handles:
            handle.remove()
    flops = params = 0
    counted = {result["name"]: result for result in results}
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) and getattr(module, "groups", 1) == 1:
            weight = weight.detach()
            out_total, in_total = weight.shape[0], weight.shape[1]
            out_live = int((weight.flatten(1) != 0).any(dim=1).sum())
            in_live = min(live_inputs.get(name, in_total), in_total)
            if name in counted:
                flops += counted.pop(name)["flops"] // 8 * out_live * in_live // max(out_total * in_total, 1)
            params += weight[0, 0].numel() * out_live * in_live + (out_live if bias is not None else 0)
        elif isinstance(weight, torch.Tensor) and weight.dim() == 1 and isinstance(bias, torch.Tensor):
            live = (weight.detach() != 0) | (bias.detach() != 0)  # a masked norm channel has both zero
            params += int(live.sum()) * len(own)
        else:
            params += sum(p.numel() for p in own)
    flops += sum(result["flops"] // 8 for result in counted.values())
    return int(flops), int(params)


def compressed_cost(model: nn.Module, masks: dict[str, dict[str, Any]], example_input: torch.Tensor) -> tuple[int, int, bool]:
    """``(flops, params, exact)`` of ``model`` with ``masks`` once the pruned channels are removed.

    Exact (``True``) through :class:`nncore.speedup.ModelSpeedup` on a copy; when speedup fails, the :func:`effective_flops_params` estimate (``False``). ``model`` is not touched.
    """
    from nncore.utils import count_flops_params

    work = copy.deepcopy(model)
    apply_masks(work, masks)
    shrunk = copy.deepcopy(work)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ModelSpeedup(shrunk, example_input, masks).speedup_model()
    except NncoreError:
        return (*effective_flops_params(work, example_input), False)
    flops, params, _ = count_flops_params(shrunk, (example_input,), verbose=False)
    return flops, params, True


# -- measurements ----------------------------------------------------------------------------------


def state_dict_bytes(model: nn.Module) -> int:
    """Size in bytes of the model's state_dict as ``torch.save`` writes it."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def median_latency_ms(run_once: Callable[[], Any], runs: int = LATENCY_RUNS) -> float:
    """Median wall time of ``run_once()`` in milliseconds (after warm-up calls)."""
    for _ in range(5):
        run_once()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def measure(model: nn.Module, data: JobData, *, masked: bool = False) -> dict[str, Any]:
    """Accuracy, params, FLOPs (per input), CPU latency (batch of one and of ``LATENCY_BATCH``) and
    file size of ``model``."""
    from nncore.utils import count_flops_params

    example = dummy_input(data)
    model.eval()
    if masked:
        flops, params = effective_flops_params(model, example)
    else:
        flops, params, _ = count_flops_params(model, (example,), verbose=False)
    batch = torch.randn((LATENCY_BATCH, *example.shape[1:]), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        latency = median_latency_ms(lambda: model(example))
        batch_latency = median_latency_ms(lambda: model(batch), runs=20)
    return {"accuracy": accuracy(model, data.test_loader), "params": int(params), "flops": int(flops),
            "latency_ms": latency, "batch_latency_ms": batch_latency, "size_bytes": state_dict_bytes(model),
            "estimated": masked}


def layer_sparsity(masks: dict[str, dict[str, Any]], layers: Iterable[str]) -> dict[str, float]:
    """Fraction of zero weights in each named layer's mask."""
    return {name: round(float((masks[name]["weight"] == 0).float().mean()), 4) for name in layers if name in masks}


# -- the job steps ---------------------------------------------------------------------------------


def default_config_list(sparsity: float) -> list[dict[str, Any]]:
    """Uniform pruning of the algorithm's default layers."""
    return [{"sparsity": sparsity, "op_types": ["default"]}]


def prune_and_finetune(model: nn.Module, data: JobData, args: argparse.Namespace, config_list: Any,
                       notes: list[str], verbose: bool) -> tuple[dict[str, Any], dict[str, float]]:
    """Prune ``model`` in place, fine-tune with the masks kept, unwrap; returns (masks, per-layer sparsity)."""
    pruner = make_pruner(args.algo, model, config_list, dummy_input(data), notes)
    pruner.compress()
    train_epochs(model, data.train_loader, args.finetune_epochs, lr=args.lr / 4, progress="fine-tuning",
                 on_epoch=pruner.update_epoch, on_step=pruner.step, verbose=verbose)
    pruner.apply_masks()
    masks = pruner.masks()
    sparsity = layer_sparsity(masks, pruner.wrappers)
    pruner.unwrap_model()
    return masks, sparsity


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


def measure_onnx(path: Path, data: JobData) -> dict[str, Any]:
    """Accuracy, latency (batch of one) and file size of an ONNX model run by onnxruntime."""
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    correct = count = 0
    for inputs, labels in data.test_loader:
        for row, label in zip(inputs.numpy(), labels.numpy()):
            logits = session.run(None, {input_name: row[None].astype(np.float32)})[0]
            correct += int(logits.argmax() == label)
            count += 1
    example = dummy_input(data).numpy()
    latency = median_latency_ms(lambda: session.run(None, {input_name: example}))
    return {"accuracy": correct / count, "latency_ms": latency, "size_bytes": path.stat().st_size}


# -- reporting -------------------------------------------------------------------------------------


def _human_bytes(size: float) -> str:
    return f"{size / 1024:.1f} KiB" if size < 1024 ** 2 else f"{size / 1024 ** 2:.2f} MiB"


def _cells(metrics: dict[str, Any] | None, baseline: dict[str, Any]) -> dict[str, str]:
    if metrics is None:
        return {}
    cells = {"accuracy": f"{metrics['accuracy'] * 100:.2f}%", "latency_ms": f"{metrics['latency_ms']:.3f} ms",
             "size_bytes": _human_bytes(metrics["size_bytes"])}
    if "batch_latency_ms" in metrics:
        cells["batch_latency_ms"] = f"{metrics['batch_latency_ms']:.2f} ms"
    for key in ("params", "flops"):
        if key in metrics:
            mark = "~" if metrics.get("estimated") else ""
            cells[key] = f"{mark}{metrics[key]:,} ({metrics[key] / baseline[key]:.2f}x)" if baseline[key] else str(metrics[key])
    return cells


def row_labels(threads: int) -> tuple[tuple[str, str], ...]:
    """``(metric key, label)`` of each table row."""
    on = f"{threads} thread{'s' if threads != 1 else ''}"
    return (("accuracy", "accuracy (test)"), ("params", "params"), ("flops", "FLOPs (MACs)"),
            ("latency_ms", f"CPU latency (batch 1, {on})"),
            ("batch_latency_ms", f"CPU latency (batch {LATENCY_BATCH}, {on})"),
            ("size_bytes", "file size"))


def comparison_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the before/after table."""
    columns = [("baseline", report["baseline"]), ("compressed", report["compressed"])]
    if report.get("int8"):
        columns.append(("int8 (onnxruntime)", report["int8"]))
    cells = [_cells(metrics, report["baseline"]) for _, metrics in columns]
    rows = [[label, *(c.get(key, "-") for c in cells)] for key, label in row_labels(report["threads"])]
    return ["", *(name for name, _ in columns)], rows


def markdown_report(report: dict[str, Any]) -> str:
    """``report.md``: the table, the per-layer sparsity and the notes."""
    header, rows = comparison_rows(report)
    lines = [f"# nncore compress: {report['model']} on {report['data']}", "",
             f"algorithm `{report['algo']}`, config_list `{json.dumps(report['config_list'])}`", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "| layer | sparsity |", "|---|---|"]
    lines += [f"| {name} | {value:.2%} |" for name, value in report["layer_sparsity"].items()]
    lines += ["", "Figures marked ~ are estimates from the masks (no speedup)."] if report["compressed"].get("estimated") else []
    lines += ["", "## Notes", *(f"- {note}" for note in report["notes"])] if report["notes"] else []
    return "\n".join(lines) + "\n"


def sparsity_plot(path: Path, layer_sparsity_: dict[str, float]) -> None:
    """Bar chart of per-layer sparsity (PNG)."""
    from nncore.utils.sensitivity import pyplot, save_figure

    plt = pyplot()
    figure, axes = plt.subplots(figsize=(max(4, len(layer_sparsity_) * 0.8), 3.5))
    axes.bar(list(layer_sparsity_), list(layer_sparsity_.values()))
    axes.set(ylim=(0, 1), ylabel="sparsity (fraction of weights pruned)", title="per-layer sparsity")
    axes.tick_params(axis="x", labelrotation=45)
    save_figure(figure, str(path))


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    data = text.encode("utf-8")
    atomic_write(path, lambda handle: handle.write(data))


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


def check_budget_arguments(args: argparse.Namespace) -> None:
    """One-line errors for negative epochs, a bad batch size or a bad sparsity."""
    for option in ("epochs", "finetune_epochs"):
        if getattr(args, option) < 0:
            raise CommandLineError(f"--{option.replace('_', '-')} must be >= 0, got {getattr(args, option)}")
    if args.batch_size < 1:
        raise CommandLineError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0 <= getattr(args, "sparsity", 0) < 1:
        raise CommandLineError(f"--sparsity must be in [0, 1), got {args.sparsity}")


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
