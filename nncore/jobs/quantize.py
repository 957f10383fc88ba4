"""``nncore compress --quantize``: int8 quantization of the compressed model, exported to an int8
ONNX model and measured in ONNX Runtime (accuracy included, not simulated).

A quantizer that asks the job for ``calibration_data`` (post-training quantization, ``ptq``) is
calibrated by ``compress()`` and not trained; any other (``qat``) is fine-tuned for half the
fine-tuning epochs (at least one).
"""
from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from nncore.cli import CommandLineError
from nncore.data import JobData, train_epochs
from nncore.errors import ConfigError
from nncore.jobs.options import say
from nncore.jobs.supplies import JobSupplies, check_needs, declared

QUANT_CONFIG = [{"quant_types": ["weight", "input", "output"], "quant_bits": {"weight": 8, "input": 8, "output": 8},
                 "op_types": ["Conv2d", "Linear"]}]


def check_quantizer(name: str, model: nn.Module) -> type:
    """The registered quantizer ``name`` once the job can run it on ``model`` (ONNX Runtime
    installed, its needs supplied, the job's config_list valid for it)."""
    from nncore.registry import get_compressor

    cls = get_compressor(name)
    if getattr(cls, "kind", "") != "quantizer":
        raise CommandLineError(f"--quantize {name!r} is a {cls.kind or 'compressor'}, not a quantizer")
    check_needs(cls, f"--quantize {name!r}")
    try:
        cls.check_config(model, copy.deepcopy(QUANT_CONFIG))
    except ConfigError as exc:
        raise CommandLineError(f"--quantize {name!r} cannot quantize {type(model).__name__}: "
                               + "; ".join(exc.errors)) from exc
    if importlib.util.find_spec("onnxruntime") is None:
        raise CommandLineError("--quantize measures the int8 model in ONNX Runtime: pip install onnxruntime")
    return cls


def is_calibrated(cls: type) -> bool:
    """Whether ``cls`` is calibrated on data (post-training) rather than trained."""
    return "calibration_data" in declared(cls, "job_arguments").values()


def quantize_int8(cls: type, compressed: nn.Module, data: JobData, *, epochs: int, lr: float, output: Path,
                  seed: int, verbose: bool) -> Path:
    """Quantize a copy of ``compressed`` with ``cls`` (calibrated, or trained ``epochs`` epochs),
    export ``model_<name>.pt``, ``calibration.pt`` and ``model_int8.onnx`` into ``output``; returns
    the ONNX path."""
    from nncore.speedup import export_int8_onnx

    model = copy.deepcopy(compressed)
    supplies = JobSupplies(model, data, lr=lr, output=output, seed=seed, verbose=verbose)
    quantizer = cls(model, copy.deepcopy(QUANT_CONFIG), **supplies.arguments(cls))
    say(verbose, f"quantizing: {cls.__name__}" + (", calibrating" if is_calibrated(cls) else ""))
    quantizer.compress()
    if not is_calibrated(cls):
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(supplies.optimizer, T_max=max(epochs, 1))
        train_epochs(model, data.train_loader, epochs, optimizer=supplies.optimizer, scheduler=scheduler,
                     progress=f"{cls.name} fine-tuning", on_epoch=quantizer.update_epoch, on_step=quantizer.step,
                     verbose=verbose)
    calibration = quantizer.export_model(str(output / f"model_{cls.name}.pt"),
                                         calibration_path=str(output / "calibration.pt"))
    onnx_path = output / "model_int8.onnx"
    export_int8_onnx(quantizer.bound_model, calibration, str(onnx_path), list(data.input_shape))
    return onnx_path


def int8_figures(onnx_path: Path, data: JobData, threads: int) -> tuple[dict[str, Any], Any]:
    """Accuracy and file size of the int8 ONNX model in ONNX Runtime, and its session."""
    from nncore.jobs.measure import onnx_accuracy, onnx_session

    session = onnx_session(onnx_path, threads)
    return {"accuracy": onnx_accuracy(session, data), "size_bytes": onnx_path.stat().st_size}, session
