"""PtqQuantizer: post-training quantization from a few calibration batches (no training)."""
from __future__ import annotations

import itertools
from typing import Any, ClassVar, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from nncore.builtin_quantizers.functional import affine_qparams, channel_view, fake_quantize, integer_range
from nncore.builtin_quantizers.observers import OBSERVERS, WEIGHT_OBSERVERS, Observer, weight_absmax
from nncore.builtin_quantizers.qat import fold_batchnorms
from nncore.compressor import Quantizer, quant_config_schema
from nncore.config import LayerConfig
from nncore.errors import ConfigError, NncoreError
from nncore.hookspecs import hookimpl
from nncore.utils.batchnorm import find_following_batchnorms
from nncore.wrapper import QuantizerModuleWrapper

ACTIVATIONS = ("input", "output")


def model_inputs(item: Any, position: int) -> tuple[tuple, dict[str, Any]]:
    """``(args, kwargs)`` for ``model(*args, **kwargs)`` from one calibration item: a tensor, a
    tuple/list whose first element is the input (``(x, y)`` from a DataLoader), or a dict of
    keyword inputs."""
    if isinstance(item, torch.Tensor):
        return (item,), {}
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        return (item[0],), {}
    if isinstance(item, dict) and item and all(isinstance(k, str) for k in item):
        return (), dict(item)
    raise ConfigError(
        f"calibration_data item {position} is a {type(item).__name__}; expected a tensor, a tuple/list whose "
        "first element is the input tensor, or a dict of keyword inputs", header="invalid calibration_data")


def _describe(args: tuple, kwargs: dict[str, Any]) -> str:
    def shape(value: Any) -> str:
        return f"tensor of shape {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
    parts = [shape(a) for a in args] + [f"{k}={shape(v)}" for k, v in kwargs.items()]
    return ", ".join(parts)


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device) for v in value)
    return value


class PtqQuantizer(Quantizer):
    """Post-training quantization: the model runs a few calibration batches, observers choose
    each quantized tensor's range, and the model then computes with fake-quantized weights and
    activations. No training, no labels.

    * Weights: symmetric, per output channel (``[-(2^(b-1) - 1), 2^(b-1) - 1]``), clipped at
      ``max|w|`` (observer ``minmax``, the default) or at the value with the smallest squared
      error (``mse``).
    * Activations (a layer's input and output, also of modules without weight such as ReLU6):
      affine, unsigned (``[0, 2^b - 1]``), range chosen by the observer: ``minmax``,
      ``percentile``, ``mse`` or ``entropy`` (see :mod:`nncore.builtin_quantizers.observers`).
    * A BatchNorm right after a quantized Conv/Linear is folded into its weight before the weight
      is quantized (as QAT does); the calibration records it (``folded_batchnorm``).

    ``compress()`` calibrates; ``export_model`` then writes the weights and the calibration config
    that :func:`nncore.speedup.export_int8_onnx` takes unchanged, as after QAT.

    :param model: the float model (trained).
    :param config_list: ``quant_types``, ``quant_bits``; per layer optionally ``observer`` (a name
        for the layer's activations, or a dict per quant type, e.g. ``{'weight': 'mse', 'output':
        'percentile'}``) and ``percentile``.
    :param calibration_data: a DataLoader or any iterable; each item is an input tensor, a tuple or
        list whose first element is the input (``(x, y)``), or a dict of keyword inputs.
    :param num_batches: how many items of ``calibration_data`` to run (default: all of them).
    :param observer: the activations' observer where ``config_list`` names none.
    :param percentile: for the ``percentile`` observer: the share of values (%) kept in range.
    :param verbose: show a progress bar while calibrating.
    :param plugins: extra hook implementations (see :mod:`nncore.hookspecs`).

    >>> quantizer = PtqQuantizer(model, [{'quant_types': ['weight', 'input', 'output'], 'quant_bits': 8,
    ...                                   'op_types': ['default']}], calibration_loader, num_batches=16)
    >>> quantizer.compress()
    >>> quantizer.export_model('ptq.pth', 'calibration.pth')
    """

    name: ClassVar[str] = "ptq"
    job_arguments: ClassVar[Mapping[str, str]] = {"calibration_data": "calibration_data"}
    aliases: ClassVar[tuple[str, ...]] = ("PtqQuantizer",)
    config_schema: ClassVar[dict[str, Any]] = quant_config_schema(extra={
        "observer": {
            "type": ["string", "object"], "propertyNames": {"enum": ["weight", *ACTIVATIONS]},
            "description": f"Observer of the layer's activations ({', '.join(OBSERVERS)}), or a dict per quant "
                           f"type ('weight': {' or '.join(WEIGHT_OBSERVERS)}).",
        },
        "percentile": {"type": "number", "exclusiveMinimum": 50, "maximum": 100,
                       "description": "percentile observer: the share of values (%) kept in range."},
    })

    def __init__(
        self,
        model: nn.Module,
        config_list: Sequence[dict[str, Any]],
        calibration_data: Iterable[Any],
        num_batches: int | None = None,
        observer: str = "minmax",
        percentile: float = 99.99,
        *,
        verbose: bool = False,
        plugins: Iterable[Any] = (),
    ):
        errors = []
        if isinstance(calibration_data, torch.Tensor) or not isinstance(calibration_data, Iterable):
            errors.append(f"calibration_data must be an iterable of batches (a DataLoader, a list of tensors, ...), "
                          f"got a {type(calibration_data).__name__}" + ("; wrap one batch as [x]"
                                                                        if isinstance(calibration_data, torch.Tensor) else ""))
        if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1):
            errors.append(f"num_batches must be a positive int or None, got {num_batches!r}")
        if observer not in OBSERVERS:
            errors.append(f"observer: {observer!r} is not one of {list(OBSERVERS)}")
        if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 50 < percentile <= 100:
            errors.append(f"percentile: {percentile!r} is out of range; the share of values kept must be in (50, 100]")
        if errors:
            raise ConfigError(errors, header="invalid argument for PtqQuantizer")
        self.calibration_data = calibration_data
        self.num_batches = num_batches
        self.observer = observer
        self.percentile = float(percentile)
        self.verbose = verbose
        self.observers: dict[tuple[str, str], Observer] = {}
        self.calibrated = False
        super().__init__(model, config_list, plugins=plugins)

    @hookimpl(specname="validate_config")
    def check_observers(self, config_list: list[dict[str, Any]]) -> list[str]:
        errors = []
        for index, entry in enumerate(config_list):
            value, types = entry.get("observer"), entry.get("quant_types") or []
            where = f"config_list[{index}].observer"
            if isinstance(value, str) and value not in OBSERVERS:
                errors.append(f"{where}: {value!r} is not one of {list(OBSERVERS)}")
            for kind, name in (value.items() if isinstance(value, dict) else ()):
                allowed = WEIGHT_OBSERVERS if kind == "weight" else OBSERVERS
                if kind not in types:
                    errors.append(f"{where}.{kind}: {kind!r} is not in quant_types {types}")
                elif name not in allowed:
                    errors.append(f"{where}.{kind}: {name!r} is not one of {list(allowed)}")
        return errors

    def observer_of(self, config: LayerConfig, kind: str) -> str:
        """The observer of quant type ``kind`` of a layer."""
        value = config.get("observer")
        if isinstance(value, dict) and kind in value:
            return value[kind]
        if isinstance(value, str) and kind != "weight":
            return value
        return "minmax" if kind == "weight" else self.observer

    # -- calibration --------------------------------------------------------------------------

    def _batches(self) -> Iterator[tuple[int, tuple, dict[str, Any]]]:
        items = iter(self.calibration_data)
        if self.num_batches is not None:
            items = itertools.islice(items, self.num_batches)
        device = next((p.device for p in self.bound_model.parameters()), torch.device("cpu"))
        for position, item in enumerate(items):
            args, kwargs = model_inputs(item, position)
            yield position, _to_device(args, device), _to_device(kwargs, device)

    def _run(self, position: int, args: tuple, kwargs: dict[str, Any]) -> None:
        try:
            self.bound_model(*args, **kwargs)
        except NncoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the user's model on their data
            raise ConfigError(f"calibration_data item {position} ({_describe(args, kwargs)}) cannot be run by the model: "
                              f"{type(exc).__name__}: {exc}", header="invalid calibration_data") from exc

    def compress(self) -> nn.Module:
        """Fold BatchNorms, wrap the selected layers, run the calibration batches and set every
        range; from now on the model computes quantized. On a failure the model is given back
        unwrapped, as it was."""
        batches = self._batches()
        first = next(batches, None)
        if first is None:
            raise ConfigError("calibration_data yielded no batch: calibration needs at least one",
                              header="invalid calibration_data")
        was_training = self.bound_model.training
        self.bound_model.eval()
        try:
            with torch.no_grad():
                self._run(*first)  # the float model takes the data, before anything changes
                weighted = [c.name for c in self.layer_configs if "weight" in c["quant_types"]]
                pairs = find_following_batchnorms(self.bound_model, weighted, first[1], first[2])
                super().compress()
                fold_batchnorms(self, pairs)
                self.bound_model.eval()  # the new wrappers too: BatchNorms keep their statistics
                try:
                    self._calibrate(itertools.chain([first], batches))
                except BaseException:
                    self.unwrap_model()
                    raise
        finally:
            self.bound_model.train(was_training)
        return self.bound_model

    def _calibrate(self, batches: Iterable[tuple[int, tuple, dict[str, Any]]]) -> None:
        for name, wrapper in self.wrappers.items():
            for kind in ACTIVATIONS:
                if kind in wrapper.bits:
                    self.observers[(name, kind)] = Observer(self.observer_of(wrapper.config, kind), wrapper.bits[kind],
                                                            wrapper.config.get("percentile", self.percentile))
        total = _length(self.calibration_data)
        if self.num_batches is not None:
            total = self.num_batches if total is None else min(total, self.num_batches)
        seen = 0
        for position, args, kwargs in tqdm(batches, total=total, desc="PTQ calibration (batches)",
                                           disable=not self.verbose, leave=False):
            self._run(position, args, kwargs)
            seen += 1
        for (name, kind), observer in self.observers.items():
            wrapper = self.wrappers[name]
            if observer.empty:
                raise ConfigError(f"layer {name!r}: its {kind} was never seen during calibration (the model does not "
                                  "call it on the calibration data; a fused fast path, such as nn.TransformerEncoderLayer's "
                                  "in eval mode, bypasses its submodules)", header="invalid calibration_data")
            low, high = observer.quantization_range()
            getattr(wrapper, f"tracked_min_{kind}").fill_(low)
            getattr(wrapper, f"tracked_max_{kind}").fill_(high)
            wrapper.tracked_batches.fill_(seen)
        for wrapper in self.wrappers.values():
            if "weight" in wrapper.bits:
                weight, _ = wrapper.effective_parameters(None)
                bits = wrapper.bits["weight"]
                absmax = weight_absmax(weight, self.observer_of(wrapper.config, "weight"), bits)
                wrapper.weight_scale = (absmax / ((1 << (bits - 1)) - 1)).clamp(min=1e-12).to(weight.device)
                wrapper.weight_zero_point = torch.zeros_like(wrapper.weight_scale)
        self.calibrated = True

    # -- the hooks ------------------------------------------------------------------------------

    @hookimpl
    def quantize_weight(self, wrapper: QuantizerModuleWrapper, weight: torch.Tensor) -> torch.Tensor:
        if not self.calibrated:
            return weight
        qmax = (1 << (wrapper.bits["weight"] - 1)) - 1
        scale = channel_view(wrapper.weight_scale, weight)
        return fake_quantize(weight, scale, torch.zeros_like(scale), -qmax, qmax)

    def _activation(self, wrapper: QuantizerModuleWrapper, kind: str, x: torch.Tensor) -> torch.Tensor:
        if not self.calibrated:
            self.observers[(wrapper.name, kind)].observe(x)
            return x
        bits = wrapper.bits[kind]
        scale, zero_point = affine_qparams(getattr(wrapper, f"tracked_min_{kind}"), getattr(wrapper, f"tracked_max_{kind}"), bits)
        return fake_quantize(x, scale, zero_point, *integer_range(bits, signed=False))

    @hookimpl
    def quantize_input(self, wrapper: QuantizerModuleWrapper, input: torch.Tensor) -> torch.Tensor:
        return self._activation(wrapper, "input", input)

    @hookimpl
    def quantize_output(self, wrapper: QuantizerModuleWrapper, output: torch.Tensor) -> torch.Tensor:
        return self._activation(wrapper, "output", output)


def _length(data: Any) -> int | None:
    try:
        return len(data)
    except TypeError:
        return None


@hookimpl
def register_compressors() -> list[type]:
    return [PtqQuantizer]
