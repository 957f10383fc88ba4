"""Count a model's multiply-accumulates ("flops", as NNI reports them) and parameters.

:func:`count_flops_params` runs one forward pass with hooks on the modules it knows how to count
and returns the totals plus one result per counted layer. Counts are for the input exactly as
given, batch dimension included: pass a batch of one (``(1, 3, 224, 224)``) for per-image figures.

What is counted
  ``mode='default'``: convolutions (1d/2d/3d, grouped, depthwise, transposed), ``nn.Linear``
  (any leading dimensions) and ``nn.MultiheadAttention`` (the four projections plus the
  ``Q K^T`` and ``A V`` matmuls). Bias additions are not counted.

  ``mode='full'`` adds bias additions, normalisation layers, activations, pooling, softmax and
  upsampling (one operation per element touched, two for affine normalisation).

Operations done with functions inside ``forward`` (``torch.matmul``, ``F.conv2d``) are not seen by
module hooks; register the module that does them in ``custom_ops``. Parameters are always exact:
``params`` is the sum of ``numel()`` over ``model.parameters()``, whatever was counted.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from nncore.errors import ConfigError

__all__ = ["count_flops_params"]

FlopCounter = Callable[[nn.Module, tuple, Any], int]
_HEADER = "invalid count_flops_params argument"
_MODES = ("default", "full")


# ----------------------------------------------------------------------------- counting rules
def _first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor in ``value`` (a tensor, or a nested tuple/list), or None."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _count_conv(module: nn.Module, inputs: tuple, output: torch.Tensor, *, full: bool) -> int:
    """Every output element costs ``in_channels / groups * prod(kernel)`` MACs."""
    per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
    bias = 1 if full and module.bias is not None else 0
    return output.numel() * (per_output + bias)


def _count_conv_transpose(module: nn.Module, inputs: tuple, output: torch.Tensor, *,
                          full: bool) -> int:
    """Every input element is scattered onto ``out_channels / groups * prod(kernel)`` outputs."""
    per_input = module.out_channels // module.groups * math.prod(module.kernel_size)
    bias = output.numel() if full and module.bias is not None else 0
    return inputs[0].numel() * per_input + bias


def _count_linear(module: nn.Linear, inputs: tuple, output: torch.Tensor, *, full: bool) -> int:
    """Every output element costs ``in_features`` MACs."""
    bias = 1 if full and module.bias is not None else 0
    return output.numel() * (module.in_features + bias)


def _count_multihead_attention(module: nn.MultiheadAttention, inputs: tuple, output: Any, *,
                               full: bool) -> int:
    """Q/K/V projections, ``Q K^T`` and ``A V`` (``L*S*E`` MACs each per batch item), out-projection."""
    query, key = inputs[0], inputs[1]
    embed = module.embed_dim
    batch_dim = 0 if module.batch_first else 1
    batch = query.shape[batch_dim] if query.dim() == 3 else 1
    target_len = query.shape[1 - batch_dim] if query.dim() == 3 else query.shape[0]
    source_len = key.shape[1 - batch_dim] if key.dim() == 3 else key.shape[0]
    projections = batch * (target_len * embed * embed                # query projection
                           + source_len * module.kdim * embed        # key projection
                           + source_len * module.vdim * embed        # value projection
                           + target_len * embed * embed)             # output projection
    attention = 2 * batch * target_len * source_len * embed          # Q K^T and A V, all heads
    flops = projections + attention
    if full:
        biased_outputs = (2 * source_len + target_len) if module.in_proj_bias is not None else 0
        biased_outputs += target_len if module.out_proj.bias is not None else 0
        softmax = batch * module.num_heads * target_len * source_len
        flops += batch * biased_outputs * embed + softmax
    return flops


def _count_normalization(module: nn.Module, inputs: tuple, output: Any) -> int:
    """Normalise every element; an affine transform doubles the cost."""
    affine = getattr(module, "affine", getattr(module, "elementwise_affine", False))
    return inputs[0].numel() * (2 if affine else 1)


def _count_elementwise(module: nn.Module, inputs: tuple, output: Any) -> int:
    """One operation per input element (activations, softmax)."""
    return inputs[0].numel()


def _count_pool(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    """Every output element reads a full kernel window."""
    kernel = module.kernel_size
    spatial_dims = int(type(module).__name__[-2])  # MaxPool2d -> 2
    window = math.prod(kernel) if isinstance(kernel, tuple) else kernel ** spatial_dims
    return output.numel() * window


def _count_adaptive_pool(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    """Every input element is read about once."""
    return max(inputs[0].numel(), output.numel())


_INTERPOLATION_WEIGHTS = {"nearest": 1, "linear": 2, "bilinear": 4, "bicubic": 16, "trilinear": 8}


def _count_upsample(module: nn.Upsample, inputs: tuple, output: torch.Tensor) -> int:
    """One MAC per interpolation weight of every output element."""
    return output.numel() * _INTERPOLATION_WEIGHTS.get(module.mode, 1)


def _default_rules(full: bool) -> dict[type, FlopCounter]:
    """The built-in counters for ``mode='default'`` (``full=False``) or ``mode='full'``."""
    def with_mode(counter):
        return lambda module, inputs, output: counter(module, inputs, output, full=full)

    rules: dict[type, FlopCounter] = {
        nn.Linear: with_mode(_count_linear),
        nn.MultiheadAttention: with_mode(_count_multihead_attention),
    }
    for conv in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        rules[conv] = with_mode(_count_conv)
    for conv in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
        rules[conv] = with_mode(_count_conv_transpose)
    if full:
        rules.update(_full_mode_rules())
    return rules


def _full_mode_rules() -> dict[type, FlopCounter]:
    """Counters that only ``mode='full'`` adds: normalisation, activations, pooling, upsampling."""
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
             nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
    elementwise = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
                   nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
                   nn.Hardtanh, nn.Softplus, nn.Softmax, nn.LogSoftmax)
    pools = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
    adaptive = (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
                nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
    rules: dict[type, FlopCounter] = {cls: _count_normalization for cls in norms}
    rules.update({cls: _count_elementwise for cls in elementwise})
    rules.update({cls: _count_pool for cls in pools})
    rules.update({cls: _count_adaptive_pool for cls in adaptive})
    rules[nn.Upsample] = _count_upsample
    return rules


# ------------------------------------------------------------------------------- validation
def _validate_arguments(model: Any, custom_ops: Any, mode: Any) -> dict[type, FlopCounter]:
    """Check ``model``, ``custom_ops`` and ``mode``; return ``custom_ops`` as a dict."""
    problems = []
    if not isinstance(model, nn.Module):
        problems.append(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if mode not in _MODES:
        problems.append(f"mode must be one of {_MODES}, got {mode!r}")
    if custom_ops is None:
        custom_ops = {}
    elif not isinstance(custom_ops, Mapping):
        problems.append("custom_ops must be a dict mapping module types to functions "
                        f"(module, inputs, output) -> flops, got {type(custom_ops).__name__}")
        custom_ops = {}
    for key, counter in custom_ops.items():
        if not (isinstance(key, type) and issubclass(key, nn.Module)):
            problems.append(f"custom_ops key {key!r} must be a subclass of torch.nn.Module")
        if not callable(counter):
            problems.append(f"custom_ops[{getattr(key, '__name__', key)!r}] must be callable "
                            f"(module, inputs, output) -> flops, got {type(counter).__name__}")
    if problems:
        raise ConfigError(problems, header=_HEADER)
    return dict(custom_ops)


def _as_inputs(x: Any, model: nn.Module) -> tuple[torch.Tensor, ...]:
    """Turn ``x`` (an input size, a tensor, or a tuple of tensors) into forward arguments."""
    if isinstance(x, torch.Tensor):
        return (x,)
    if isinstance(x, (tuple, list, torch.Size)) and x:
        if all(isinstance(item, torch.Tensor) for item in x):
            return tuple(x)
        if all(isinstance(item, int) and not isinstance(item, bool) and item > 0 for item in x):
            reference = next(iter(model.parameters()), None)
            dtype = reference.dtype if reference is not None and reference.is_floating_point() \
                else torch.float32
            device = reference.device if reference is not None else torch.device("cpu")
            return (torch.zeros(tuple(x), dtype=dtype, device=device),)
    raise ConfigError(
        [f"x must be an input size (a tuple of positive ints such as (1, 3, 224, 224)), "
         f"a tensor, or a tuple of tensors; got {x!r:.80}"], header=_HEADER)


# ------------------------------------------------------------------------------ the counter
def _find_counter(module: nn.Module, rules: dict[type, FlopCounter],
                  custom_ops: dict[type, FlopCounter]) -> FlopCounter | None:
    """The counter for ``module``: a custom one first, then a built-in one, nearest class first."""
    for table in (custom_ops, rules):
        for cls in type(module).__mro__:
            if cls in table:
                return table[cls]
    return None


def _modules_to_count(model: nn.Module, rules, custom_ops) -> list[tuple[str, nn.Module, FlopCounter]]:
    """Modules with a counter; a counted module's children are not counted again."""
    selected, counted_prefixes = [], []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in counted_prefixes):
            continue
        counter = _find_counter(module, rules, custom_ops)
        if counter is not None:
            selected.append((name or type(module).__name__, module, counter))
            counted_prefixes.append(f"{name}." if name else "")
    return selected


def _shape_of(value: Any) -> tuple | list | None:
    """The shape of a tensor, a list of shapes for several tensors, or None."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)):
        shapes = [_shape_of(item) for item in value]
        shapes = [shape for shape in shapes if shape is not None]
        return shapes[0] if len(shapes) == 1 else (shapes or None)
    return None


def _weight_shape(module: nn.Module) -> tuple | None:
    """The shape of ``weight`` (or of an attention layer's ``in_proj_weight``), or None."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        weight = getattr(module, "in_proj_weight", None)
    return tuple(weight.shape) if isinstance(weight, torch.Tensor) else None


def _positional_inputs(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
    """``args`` plus keyword arguments, all in the order of ``module.forward``'s parameters."""
    if not kwargs:
        return args
    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return args + tuple(kwargs.values())
    return tuple(bound.arguments.values())


def _make_hook(name: str, counter: FlopCounter, results: dict[str, dict]):
    """A forward hook that runs ``counter`` and records one result for module ``name``."""
    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        inputs = _positional_inputs(module, args, kwargs)
        flops = counter(module, inputs, output)
        try:
            flops = int(flops)
        except (TypeError, ValueError, RuntimeError):
            raise ConfigError([f"the flop counter for {name} ({type(module).__name__}) returned "
                               f"{flops!r}; it must return a number"], header=_HEADER) from None
        if name in results:  # a module called more than once: add up its calls
            results[name]["flops"] += flops
            return
        results[name] = {
            "name": name,
            "module_type": type(module).__name__,
            "flops": flops,
            "params": sum(p.numel() for p in module.parameters()),
            "weight_shape": _weight_shape(module),
            "input_shape": _shape_of(inputs),
            "output_shape": _shape_of(output),
        }
    return hook


def _uncounted_parameter_holders(model: nn.Module, selected) -> list[tuple[str, nn.Module, int]]:
    """Modules outside the counted ones that own parameters (a BatchNorm in ``mode='default'``),
    with the number of parameters each owns that no counted module holds: table rows only."""
    counted = [f"{name}." for name, module, _ in selected if module is not model] or []
    seen = {id(p) for _, module, _ in selected for p in module.parameters()}
    holders = []
    for name, module in model.named_modules():
        if any(f"{name}.".startswith(prefix) for prefix in counted) or any(m is module for _, m, _ in selected):
            continue
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        if own:
            holders.append((name or type(module).__name__, module, sum(p.numel() for p in own)))
    return holders


def _run_with_hooks(model: nn.Module, inputs: tuple, selected, holders=()) -> tuple[list[dict], dict[str, dict]]:
    """One no-grad eval-mode forward pass with hooks; modes restored and hooks removed after.

    Returns the counted layers' results, in model order, and the shapes seen at ``holders``."""
    results: dict[str, dict] = {}
    shapes: dict[str, dict] = {}
    training_modes = {module: module.training for module in model.modules()}
    handles = [module.register_forward_hook(_make_hook(name, counter, results), with_kwargs=True)
               for name, module, counter in selected]
    for name, module, _ in holders:
        def record(module: nn.Module, args: tuple, output: Any, _name: str = name) -> None:
            shapes.setdefault(_name, {"input_shape": _shape_of(args), "output_shape": _shape_of(output)})
        handles.append(module.register_forward_hook(record))
    try:
        model.eval()
        with torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in training_modes.items():
            module.training = training
    order = {name: index for index, (name, _, _) in enumerate(selected)}
    return sorted(results.values(), key=lambda result: order[result["name"]]), shapes


def _scaled(value: float) -> str:
    """``1.23 G``, ``4.56 M``, ``7.89 K`` or the plain number."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {suffix}"
    return f"{value:g}"


def _format_table(rows: list[tuple[str, ...]], flops: int, params: int, uncounted: bool) -> str:
    """A per-layer table with totals, as ``verbose=True`` prints it; ``uncounted``: some rows
    are modules that own parameters but whose operations this mode does not count (FLOPs ``-``)."""
    header = ("Name", "Type", "Input shape", "Output shape", "Params", "FLOPs (MACs)")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:  # text columns left-aligned, numbers right-aligned
        return "  ".join(cell.ljust(width) if index < 4 else cell.rjust(width)
                         for index, (cell, width) in enumerate(zip(row, widths)))

    rule = "-" * len(line(header))
    body = [line(header), rule, *(line(row) for row in rows), rule]
    body.append(f"FLOPs total: {flops:,}" + (f" ({_scaled(flops)} MACs)" if flops >= 1000 else ""))
    body.append(f"Params total: {params:,}" + (f" ({_scaled(params)})" if params >= 1000 else ""))
    if uncounted:
        body.append("FLOPs '-': not counted in this mode (mode='full' counts normalisation, activations, pooling)")
    return "\n".join(body)


def _table_rows(model: nn.Module, results: list[dict], holders, shapes: dict[str, dict]) -> list[tuple[str, ...]]:
    """Counted layers and uncounted parameter holders, in the model's module order."""
    position = {name or type(module).__name__: index for index, (name, module) in enumerate(model.named_modules())}
    rows = [(r["name"], r["module_type"], str(r["input_shape"]), str(r["output_shape"]),
             f"{r['params']:,}", f"{r['flops']:,}") for r in results]
    rows += [(name, type(module).__name__, str(shapes.get(name, {}).get("input_shape")),
              str(shapes.get(name, {}).get("output_shape")), f"{count:,}", "-") for name, module, count in holders]
    return sorted(rows, key=lambda row: position.get(row[0], len(position)))


def count_flops_params(model: nn.Module, x: Any, custom_ops: dict | None = None,
                       verbose: bool = True, mode: str = "default") -> tuple[int, int, list[dict]]:
    """Count the multiply-accumulates and parameters of ``model`` on input ``x``.

    :param model: the model; it is left as it was (hooks removed, train/eval mode of every
        submodule restored, no gradient and no BatchNorm statistics update).
    :param x: an input size such as ``(1, 3, 224, 224)`` (a zero tensor of that size is fed, with
        the model's dtype and device), a tensor, or a tuple of tensors passed as ``model(*x)``.
    :param custom_ops: ``{module type: function(module, inputs, output) -> flops}`` for modules
        the built-in rules do not know (or to override them); subclasses match too.
    :param verbose: print a per-layer table and the totals; modules that own parameters but are
        not counted in this mode (a BatchNorm in ``'default'``) get a row too, so the table adds up.
    :param mode: ``'default'`` counts convolution, linear and attention layers; ``'full'`` also
        counts biases, normalisation, activations, pooling and upsampling.
    :returns: ``(flops, params, results)``: total MACs for this input (batch included), the exact
        number of parameters, and one dict per counted layer with keys ``name``,
        ``module_type``, ``flops``, ``params``, ``weight_shape``, ``input_shape``,
        ``output_shape`` (a module called several times has its flops summed).
    :raises ConfigError: ``x``, ``custom_ops``, ``mode`` or ``model`` is not what is allowed.
    """
    custom_ops = _validate_arguments(model, custom_ops, mode)
    inputs = _as_inputs(x, model)
    selected = _modules_to_count(model, _default_rules(full=mode == "full"), custom_ops)
    holders = _uncounted_parameter_holders(model, selected) if verbose else []
    results, shapes = _run_with_hooks(model, inputs, selected, holders)
    flops = sum(result["flops"] for result in results)
    params = sum(parameter.numel() for parameter in model.parameters())
    if verbose:
        print(_format_table(_table_rows(model, results, holders, shapes), flops, params, bool(holders)))
    return flops, params, results
