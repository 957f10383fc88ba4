"""Compressor, Pruner and Quantizer: the base classes every algorithm plugin extends.

An algorithm is a subclass with a registry ``name``, the JSON Schema of its own config keys
(``config_schema``) and ``@hookimpl`` methods for the hooks it answers (see
:mod:`nncore.hookspecs`). Subclasses set their own attributes *before* calling
``super().__init__`` so that their ``validate_config`` can read them.
"""
from __future__ import annotations

import copy
import io
import warnings
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import pluggy
import torch
import torch.nn as nn

from nncore.artifacts import MaskDict, atomic_write, input_spec, keep_metadata, mask_file_content, save_torch
from nncore.config import LayerConfig, build_schema, resolve_config_list, schema_errors
from nncore.config.schema import message_order, to_json_like
from nncore.errors import ConfigError, NncoreError, PluginError
from nncore.hookspecs import PROJECT_NAME, hookimpl, lifecycle, pruning, quantization
from nncore.wrapper import ModuleWrapper, QuantizerModuleWrapper, has_weight, release_masks

INSTANCE_HOOKSPECS = (pruning, quantization, lifecycle)
PUBLIC_BROADCASTS = ("update_epoch", "step")
"""Hooks that are also public compressor methods: algorithms implement them under another name."""


def instance_plugin_manager() -> pluggy.PluginManager:
    """A fresh manager with the per-compressor hook specs (calc_mask, quantize_*, lifecycle)."""
    manager = pluggy.PluginManager(PROJECT_NAME)
    for module in INSTANCE_HOOKSPECS:
        manager.add_hookspecs(module)
    return manager


def register_checked(manager: pluggy.PluginManager, plugin: Any, name: str) -> None:
    """Register ``plugin`` and check every hookimpl against the specs (unknown hook names too)."""
    try:
        manager.register(plugin, name=name)
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name!r} does not match the nncore hook specs: {exc}") from exc


def _selection_well_typed(entry: Any) -> bool:
    if not isinstance(entry, dict) or ("op_types" not in entry and "op_names" not in entry):
        return False
    for key in ("op_types", "op_names"):
        value = entry.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return False
    return isinstance(entry.get("exclude", False), bool)


def _dedupe(messages: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(messages))


class Compressor:
    """Base of every algorithm: validates ``config_list`` at the door and wraps selected layers.

    :param model: the model to compress; nothing in it changes before ``compress()``.
    :param config_list: list of dicts (see the docs); checked against :meth:`json_schema`.
    :param plugins: extra hook implementations (objects or modules with ``@nncore.hookimpl``
        functions) that run before the algorithm's own; see :mod:`nncore.hookspecs`.
    :raises ConfigError: listing every problem of ``config_list``; the model is untouched.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    config_schema: ClassVar[dict[str, Any]] = {"properties": {}, "required": []}
    default_op_types: ClassVar[tuple[str, ...]] = ()
    supported_op_types: ClassVar[tuple[str, ...] | None] = None
    job_arguments: ClassVar[Mapping[str, str]] = {}
    """Constructor arguments a job (``nncore compress``) passes: ``{parameter: supply}``, e.g.
    ``{"trainer": "trainer"}``; the supplies are listed in :mod:`nncore.jobs.supplies`."""
    job_config: ClassVar[Mapping[str, str]] = {}
    """Keys of the config_list entry a job builds from ``--sparsity``: ``{key: value name}``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for public in PUBLIC_BROADCASTS:
            if getattr(cls.__dict__.get(public), f"{PROJECT_NAME}_impl", None) is not None:
                raise PluginError(
                    f"{cls.__qualname__}.{public} would hide the public {public}() that broadcasts the hook; "
                    f"implement it as @hookimpl(specname={public!r}) on a method with another name, e.g. on_{public}"
                )

    def __init__(self, model: nn.Module, config_list: Sequence[dict[str, Any]], *, plugins: Iterable[Any] = ()):
        self._setup(model, config_list, plugins)
        self.wrappers: dict[str, ModuleWrapper] = {}
        self.followers: dict[str, ModuleWrapper] = {}

    def _setup(self, model: nn.Module, config_list: Any, plugins: Iterable[Any]) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}", header="invalid model")
        self.bound_model = model
        self._hooks = instance_plugin_manager()
        register_checked(self._hooks, self, f"algorithm:{type(self).__name__}")
        for position, plugin in enumerate(plugins):
            register_checked(self._hooks, plugin, f"plugins[{position}]")
        self.config_list = to_json_like(copy.deepcopy(config_list))
        self.layer_configs: tuple[LayerConfig, ...] = self._validate_and_resolve(self.config_list)

    @classmethod
    def check_config(
        cls, model: nn.Module, config_list: Any, *, plugins: Iterable[Any] = ()
    ) -> tuple[LayerConfig, ...]:
        """Validate ``config_list`` against ``model`` without building the algorithm.

        Runs the schema check, every ``validate_config`` hook and the layer resolution, as the
        constructor does (a ``validate_config`` hook may only read ``config_list`` and
        ``compressor.bound_model``). Returns the resolved layers; the model is not touched.

        :raises ConfigError: listing every problem.
        """
        checker = cls.__new__(cls)
        checker._setup(model, config_list, plugins)
        return checker.layer_configs

    @property
    def hook(self) -> Any:
        """This instance's hook relay: ``self.hook.calc_mask(compressor=self, ...)``."""
        return self._hooks.hook

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The JSON Schema a ``config_list`` for this algorithm must satisfy."""
        return build_schema(cls.config_schema.get("properties", {}), cls.config_schema.get("required", ()))

    @classmethod
    def unsupported_reason(cls, module: nn.Module) -> str | None:
        """Why this algorithm cannot compress ``module`` (``None`` when it can)."""
        if cls.supported_op_types is not None and type(module).__name__ not in cls.supported_op_types:
            return f"{cls.__name__} supports only {', '.join(cls.supported_op_types)}"
        if not isinstance(getattr(module, "weight", None), nn.Parameter):
            return "it has no weight parameter"
        return None

    def layer_errors(self, layers: tuple[LayerConfig, ...]) -> list[str]:
        """Problems of resolved layers that depend on both the module and its options (none here)."""
        return []

    def _validate_and_resolve(self, config_list: Any) -> tuple[LayerConfig, ...]:
        errors = schema_errors(self.json_schema(), config_list)
        if not errors:
            for answer in self.hook.validate_config(compressor=self, config_list=config_list):
                errors.extend(answer or ())
        entries = config_list if isinstance(config_list, list) else []
        defaults = {
            key: spec["default"]
            for key, spec in self.config_schema.get("properties", {}).items()
            if isinstance(spec, dict) and "default" in spec
        }
        layers = resolve_config_list(
            self.bound_model,
            [entry if _selection_well_typed(entry) else None for entry in entries],
            default_op_types=self.default_op_types,
            defaults=defaults,
            unsupported_reason=self.unsupported_reason,
            errors=errors,
        )
        errors.extend(self.layer_errors(layers))
        if errors:
            raise ConfigError(sorted(_dedupe(errors), key=message_order), header=f"invalid config_list for {type(self).__name__}")
        return layers

    # -- wrapping ---------------------------------------------------------------------------

    def _wrap_model(self) -> None:
        if self.wrappers:
            raise NncoreError(f"{type(self).__name__}: compress() was already called on this compressor")
        modules = dict(self.bound_model.named_modules())
        for config in sorted(self.layer_configs, key=lambda c: -c.name.count(".")):
            wrapper = self.make_wrapper(modules[config.name], config)
            set_submodule(self.bound_model, config.name, wrapper)
            self.wrappers[config.name] = wrapper
        self.wrappers = {c.name: self.wrappers[c.name] for c in self.layer_configs}

    def make_wrapper(self, module: nn.Module, config: LayerConfig) -> nn.Module:
        """The wrapper that stands in for ``module`` (pruners: :class:`ModuleWrapper`)."""
        return ModuleWrapper(module, config.name, config)

    def all_wrappers(self) -> dict[str, nn.Module]:
        """Configured layers and followers (e.g. the BatchNorm after a pruned conv), by name."""
        return {**self.wrappers, **self.followers}

    def add_follower(self, name: str, leader: str) -> ModuleWrapper:
        """Wrap module ``name`` whose channels follow layer ``leader`` (set its masks yourself)."""
        if name in self.followers:
            return self.followers[name]
        module = self.bound_model.get_submodule(name)
        config = LayerConfig(name=name, op_type=type(module).__name__, options={"leader": leader})
        wrapper = ModuleWrapper(module, name, config)
        set_submodule(self.bound_model, name, wrapper)
        self.followers[name] = wrapper
        return wrapper

    def unwrap_model(self) -> nn.Module:
        """Put the original module objects back (their weights keep what training made of them)."""
        for name, wrapper in self.all_wrappers().items():
            set_submodule(self.bound_model, name, wrapper.module)
            if isinstance(wrapper, ModuleWrapper):
                release_masks(wrapper)
        self.wrappers, self.followers = {}, {}
        return self.bound_model

    def get_modules_wrapper(self) -> list[nn.Module]:
        """The wrappers, in model order (NNI's name for it)."""
        return list(self.wrappers.values())

    def compress(self) -> nn.Module:
        """Wrap the selected layers and put the algorithm in effect; returns the model."""
        raise NotImplementedError

    # -- training progress ------------------------------------------------------------------

    def update_epoch(self, epoch: int) -> None:
        """Tell the algorithm that ``epoch`` starts; a no-op for algorithms that do not schedule."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ConfigError(f"update_epoch(epoch): epoch must be an int >= 0, got {epoch!r}", header="invalid argument")
        self.hook.update_epoch(compressor=self, epoch=epoch)

    def step(self) -> None:
        """Tell the algorithm that a mini-batch finished; a no-op for most algorithms."""
        self.hook.step(compressor=self)


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted, as in ``named_modules()``) by ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


class Pruner(Compressor):
    """Base of pruning algorithms: masks computed by the ``calc_mask`` hook, kept in wrappers.

    :param model: the model to prune.
    :param config_list: list of dicts (see the docs).
    :param optimizer: the training optimizer, NNI's optional third positional argument: every
        pruner accepts it. Masked weights stay zero through the steps of any optimizer anyway;
        pruners that read gradients or rewind training (TaylorFO, Lottery Ticket) use it.
    :param plugins: extra hook implementations (see :mod:`nncore.hookspecs`).
    :raises ConfigError: ``optimizer`` is neither ``None`` nor a ``torch.optim.Optimizer``.
    """

    kind: ClassVar[str] = "pruner"
    job_config: ClassVar[Mapping[str, str]] = {"sparsity": "sparsity"}
    default_op_types: ClassVar[tuple[str, ...]] = (
        "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear",
    )

    def __init__(self, model: nn.Module, config_list: Sequence[dict[str, Any]],
                 optimizer: torch.optim.Optimizer | None = None, *, plugins: Iterable[Any] = ()):
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(f"{type(self).__name__}: optimizer must be a torch.optim.Optimizer or None, "
                              f"got {type(optimizer).__name__}", header="invalid argument")
        self.optimizer = optimizer
        super().__init__(model, config_list, plugins=plugins)

    def compress(self) -> nn.Module:
        """Wrap the selected layers and compute their masks; the model prunes from now on."""
        self._wrap_model()
        self.after_wrap()
        self.update_masks()
        return self.bound_model

    def after_wrap(self) -> None:
        """Called once the layers are wrapped and before the first masks (statistics hooks go here)."""

    def update_masks(self, sparsities: Mapping[str, float] | None = None) -> None:
        """Recompute masks: of the layers in ``sparsities`` at those values, else of every
        layer at its configured ``sparsity``."""
        if sparsities is None:
            sparsities = {name: wrapper.config["sparsity"] for name, wrapper in self.wrappers.items()}
        for name, sparsity in sparsities.items():
            wrapper = self.wrappers[name]
            masks = self.hook.calc_mask(compressor=self, wrapper=wrapper, sparsity=sparsity)
            if masks is None:
                raise PluginError(f"no calc_mask implementation answered for layer {name!r} of {type(self).__name__}")
            wrapper.set_masks(masks["weight_mask"], masks.get("bias_mask"))

    def apply_masks(self) -> None:
        """Zero every masked weight in place (done for you after each optimizer step)."""
        for wrapper in self.all_wrappers().values():
            wrapper.apply_masks()

    def masks(self) -> MaskDict:
        """``{module name: {parameter name: mask or None}}`` on the CPU: ``'weight'`` and ``'bias'``
        for most layers (``None``: no bias). A wrapper that masks a submodule's parameter
        (``out_proj.weight`` of an ``nn.MultiheadAttention``) reports it under that submodule."""
        entries: MaskDict = {}
        for name, wrapper in self.all_wrappers().items():
            for parameter, mask in wrapper.parameter_masks().items():
                owner, _, key = parameter.rpartition(".")
                entry = entries.setdefault(f"{name}.{owner}" if owner else name, {})
                entry[key] = None if mask is None else mask.detach().cpu().clone()
        return entries

    def clean_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state_dict under the original model's keys, masked values zero (with the
        modules' versions in ``_metadata``, so it loads into any model of the original class)."""
        self.apply_masks()
        state: dict[str, torch.Tensor] = {}
        wrapped = self.all_wrappers()
        source = self.bound_model.state_dict()
        for key, value in source.items():
            owner = next((n for n in wrapped if key.startswith(n + ".")), None)
            if owner is None:
                state[key] = value
                continue
            rest = key[len(owner) + 1:]
            if rest.startswith("module."):
                state[f"{owner}.{rest[len('module.'):]}"] = value

        def unwrapped(prefix: str) -> str | None:
            if prefix in wrapped:
                return None  # the wrapper's own version; its module's entry takes the name
            owner = next((n for n in wrapped if prefix == f"{n}.module" or prefix.startswith(f"{n}.module.")), None)
            return prefix if owner is None else owner + prefix[len(owner) + len(".module"):]

        return keep_metadata(state, source, unwrapped)

    def load_model_state_dict(self, model_state: Mapping[str, Any]) -> None:
        """Load a state dict of the original model (e.g. one ``export_model`` wrote) into the
        wrapped model; the masks stay in effect (NNI's method).

        :raises RuntimeError: from ``load_state_dict`` when keys or shapes do not match; the
            wrappers are back in place either way.
        """
        wrapped = self.all_wrappers()
        for name, wrapper in wrapped.items():
            set_submodule(self.bound_model, name, wrapper.module)
        try:
            self.bound_model.load_state_dict(model_state)
        finally:
            for name, wrapper in wrapped.items():
                set_submodule(self.bound_model, name, wrapper)
        self.apply_masks()

    def export_model(
        self,
        model_path: str,
        mask_path: str | None = None,
        onnx_path: str | None = None,
        input_shape: Sequence[int] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        """Write the pruned weights, and optionally the masks and an ONNX model.

        Every file is produced in memory first and then written atomically, so a failure
        leaves no half-written file.

        :param model_path: state_dict with the original model's keys; masked values are zero.
        :param mask_path: the :meth:`masks` (``{module name: {'weight': mask, 'bias': mask or None}}``), plus the
            example input's shapes and dtypes (the pruner's ``dummy_input``, else ``input_shape``)
            under :data:`nncore.artifacts.MASK_METADATA_KEY`, so that
            ``apply_compression_results(model, mask_path)`` can shrink the model.
        :param onnx_path: ONNX export of the masked model (needs ``input_shape``).
        :param input_shape: shape of the dummy input for the ONNX export, e.g. ``[1, 1, 28, 28]``.
        :param device: device of the dummy input (default: the model's).
        """
        if not self.wrappers:
            raise NncoreError(f"{type(self).__name__}.export_model: call compress() first")
        if onnx_path is not None and input_shape is None:
            raise ConfigError("export_model: onnx_path needs input_shape, e.g. [1, 3, 32, 32]", header="invalid argument")
        if input_shape is not None:
            check_input_shape(input_shape)
        onnx_bytes = onnx_export_bytes(self.bound_model, input_shape, device) if onnx_path else None
        save_torch(self.clean_state_dict(), model_path)
        if mask_path is not None:
            spec = input_spec(getattr(self, "dummy_input", None))
            if spec is None and input_shape is not None:
                spec = {"shape": list(input_shape), "dtype": "float32"}
            save_torch(mask_file_content(self.masks(), {"dummy_input": spec} if spec else None), mask_path)
        if onnx_path is not None:
            atomic_write(onnx_path, lambda handle: handle.write(onnx_bytes))


def check_input_shape(input_shape: Any) -> None:
    """Raise :class:`ConfigError` unless ``input_shape`` is a list or tuple of positive ints."""
    if not isinstance(input_shape, (list, tuple)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape):
        shown = list(input_shape) if isinstance(input_shape, (list, tuple)) else input_shape
        raise ConfigError(f"input_shape must be a list of positive ints, got {shown!r}", header="invalid argument")


def onnx_export_bytes(model: nn.Module, input_shape: Sequence[int], device: torch.device | str | None = None) -> bytes:
    """The ONNX serialization of ``model`` (in eval mode) for a random input of ``input_shape``;
    the batch axis is dynamic (any batch size runs)."""
    check_input_shape(input_shape)
    if device is None:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else "cpu"
    dummy = torch.randn(*input_shape, device=device)
    buffer = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (dummy,), buffer, dynamo=False, input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    finally:
        model.train(was_training)
    return buffer.getvalue()


# -- quantization --------------------------------------------------------------------------------

QUANT_TYPES = ("weight", "input", "output")
MAX_BITS = 32


def quant_config_schema(
    quant_types: Sequence[str] = QUANT_TYPES,
    default_bits: int = 8,
    max_bits: int = MAX_BITS,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``config_schema`` of a quantizer: ``quant_types`` (required), ``quant_bits`` and ``extra``.

    ``quant_bits`` is an int or a dict; JSON Schema applies ``minimum``/``maximum`` to the int
    form only and ``propertyNames``/``additionalProperties`` to the dict form only, so each
    violation gets a precise message (``config_list[0].quant_bits.weight: 0 is less than ...``).
    """
    bits = {"type": "integer", "minimum": 1, "maximum": max_bits}
    properties = {
        "quant_types": {
            "type": "array", "items": {"enum": list(quant_types)}, "minItems": 1, "uniqueItems": True,
            "description": "What to quantize: the layer's weight, its (first) input, its output.",
        },
        "quant_bits": {
            "type": ["integer", "object"], "minimum": 1, "maximum": max_bits,
            "propertyNames": {"enum": list(QUANT_TYPES)}, "additionalProperties": bits,
            "default": default_bits,
            "description": "Bits of every quantized type, or a dict {'weight': 8, 'output': 4}.",
        },
        **(extra or {}),
    }
    return {"properties": properties, "required": ["quant_types"]}


def quant_bits_errors(config_list: list[dict[str, Any]]) -> list[str]:
    """Cross-key problems: a ``quant_bits`` dict that names a type not in ``quant_types``,
    or leaves one of them without bits."""
    errors = []
    for index, entry in enumerate(config_list):
        bits, types = entry.get("quant_bits"), entry.get("quant_types")
        if entry.get("exclude") or not isinstance(bits, dict) or types is None:
            continue
        for key in bits:
            if key not in types:
                errors.append(f"config_list[{index}].quant_bits.{key}: {key!r} is not in quant_types {types}")
        for key in types:
            if key not in bits:
                errors.append(f"config_list[{index}].quant_bits: no bits for {key!r}, which is in quant_types")
    return errors


class Quantizer(Compressor):
    """Base of quantization algorithms, built-in and third-party: wraps the selected layers in
    :class:`~nncore.wrapper.QuantizerModuleWrapper`, whose forward asks the ``quantize_weight`` /
    ``quantize_input`` / ``quantize_output`` hooks; counts steps; exports weights, calibration
    and ONNX.

    An algorithm sets ``name`` and ``config_schema`` (from :func:`quant_config_schema`) and
    implements the hooks it needs. Config keys common to every quantizer (NNI's names):
    ``quant_types`` (a list of ``'weight'``, ``'input'``, ``'output'``) and ``quant_bits`` (an int
    in 1..32 for every type, or a dict keyed by the types in ``quant_types``).

    :param model: the model to quantize.
    :param config_list: ``quant_types``, ``quant_bits`` and the algorithm's own keys.
    :param optimizer: optional; if given, :meth:`step` is called after each ``optimizer.step()``
        (as NNI does), and algorithms with learnable quantization parameters (LSQ) add them to it.
    :param dummy_input: optional example input (used by algorithms that need the graph, e.g.
        QAT's BatchNorm folding).
    :param plugins: extra hook implementations (see :mod:`nncore.hookspecs`).
    """

    kind: ClassVar[str] = "quantizer"
    default_op_types: ClassVar[tuple[str, ...]] = ("Conv1d", "Conv2d", "Linear")
    config_schema: ClassVar[dict[str, Any]] = quant_config_schema()

    def __init__(
        self,
        model: nn.Module,
        config_list: Sequence[dict[str, Any]],
        optimizer: torch.optim.Optimizer | None = None,
        dummy_input: Any = None,
        *,
        plugins: Iterable[Any] = (),
    ):
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}",
                              header="invalid argument")
        self.optimizer = optimizer
        self.dummy_input = dummy_input
        self.steps = 0
        self._optimizer_hook: Any = None
        super().__init__(model, config_list, plugins=plugins)

    @hookimpl(specname="validate_config")
    def check_quant_bits(self, config_list: list[dict[str, Any]]) -> list[str]:
        return quant_bits_errors(config_list)

    @classmethod
    def unsupported_reason(cls, module: nn.Module) -> str | None:
        """Any module may have its input and output quantized (ReLU6, pooling, ...); a weight
        only where there is one (see :meth:`layer_errors`)."""
        if cls.supported_op_types is not None and type(module).__name__ not in cls.supported_op_types:
            return f"{cls.__name__} supports only {', '.join(cls.supported_op_types)}"
        return None

    def layer_errors(self, layers: tuple[LayerConfig, ...]) -> list[str]:
        """A ``'weight'`` quant type on a module that has no weight parameter."""
        return [
            f"config_list[{layer.index}]: cannot quantize the weight of {layer.name!r} ({layer.op_type}): "
            "it has no weight parameter; quantize its 'input' or 'output' instead"
            for layer in layers
            if "weight" in (layer.get("quant_types") or ()) and not has_weight(self.bound_model.get_submodule(layer.name))
        ]

    def make_wrapper(self, module: nn.Module, config: LayerConfig) -> QuantizerModuleWrapper:
        parameter = next(module.parameters(), next(self.bound_model.parameters(), None))
        device = parameter.device if parameter is not None else "cpu"
        return QuantizerModuleWrapper(module, config.name, config, self, device)

    def compress(self) -> nn.Module:
        """Wrap the selected layers; from now on the model computes quantized."""
        self._wrap_model()
        self.after_wrap()
        if self.optimizer is not None:
            self._optimizer_hook = self.optimizer.register_step_post_hook(lambda *_: self.step())
        return self.bound_model

    def after_wrap(self) -> None:
        """Called once the layers are wrapped (algorithms add their state here)."""

    def step(self) -> None:
        """Count a finished mini-batch and broadcast the ``step`` hook."""
        self.steps += 1
        super().step()

    def unwrap_model(self) -> nn.Module:
        """Put the original modules back (folded BatchNorms too); the float weights stay."""
        if self._optimizer_hook is not None:
            self._optimizer_hook.remove()
            self._optimizer_hook = None
        for wrapper in self.wrappers.values():
            if wrapper.bn is not None:
                set_submodule(self.bound_model, wrapper.bn_name, wrapper.bn)
        return super().unwrap_model()

    # -- export ------------------------------------------------------------------------------

    def _require_wrapped(self, what: str) -> None:
        if not self.wrappers:
            raise NncoreError(f"{type(self).__name__}.{what}: call compress() first")

    def clean_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state_dict under the original model's keys, weights holding their quantized
        values (with the modules' versions in ``_metadata``, so it loads into any model of the
        original class)."""
        self._require_wrapped("clean_state_dict")
        state: dict[str, torch.Tensor] = {}
        versions: dict[str, Any] = {}
        written: set[str] = set()
        source = self.bound_model.state_dict()
        for key, value in source.items():
            owner = next((name for name in self.wrappers if key.startswith(name + ".")), None)
            if owner is None:
                state[key] = value.detach().clone()
            elif owner not in written:
                written.add(owner)
                for name, module in self.wrappers[owner].original_modules().items():
                    original = module.state_dict(prefix=f"{name}.")
                    state.update(original)
                    versions.update({prefix.rstrip("."): value for prefix, value in original._metadata.items()})

        def unwrapped(prefix: str) -> str | None:
            inside = any(prefix == name or prefix.startswith(name + ".") for name in self.wrappers)
            return None if inside else prefix

        result = keep_metadata(state, source, unwrapped)
        result._metadata.update(versions)  # type: ignore[attr-defined]
        return result

    def calibration_config(self) -> dict[str, dict[str, Any]]:
        """``{layer name: {'weight_bits', 'weight_scale', 'weight_zero_point', 'min_weight',
        'max_weight', 'input_bits', 'tracked_min_input', 'tracked_max_input', 'output_bits',
        'tracked_min_output', 'tracked_max_output'}}`` (keys of the types the layer quantizes;
        ``'folded_batchnorm'``: the BatchNorm whose effect the tracked output already includes)."""
        self._require_wrapped("calibration_config")
        return {name: wrapper.calibration() for name, wrapper in self.wrappers.items()}

    def export_model(
        self,
        model_path: str,
        calibration_path: str | None = None,
        onnx_path: str | None = None,
        input_shape: Sequence[int] | None = None,
        device: torch.device | str | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Write the quantized weights, and optionally the calibration config and an ONNX model.

        Every file is produced in memory first and written atomically; the model stays wrapped.

        :param model_path: state_dict with the original model's keys, weights quantized.
        :param calibration_path: the calibration config (see :meth:`calibration_config`).
        :param onnx_path: ONNX export of the fake-quantized model (needs ``input_shape``).
        :param input_shape: shape of the dummy input for the ONNX export, e.g. ``[1, 1, 28, 28]``.
        :param device: device of the dummy input (default: the model's).
        :return: the calibration config.
        """
        self._require_wrapped("export_model")
        if onnx_path is not None and input_shape is None:
            raise ConfigError("export_model: onnx_path needs input_shape, e.g. [1, 3, 32, 32]", header="invalid argument")
        onnx_bytes = onnx_export_bytes(self.bound_model, input_shape, device) if onnx_path else None
        calibration = self.calibration_config()
        state = self.clean_state_dict()
        save_torch(state, model_path)
        if calibration_path is not None:
            save_torch(calibration, calibration_path)
        if onnx_path is not None:
            atomic_write(onnx_path, lambda handle: handle.write(onnx_bytes))
        return calibration

    def inference_model(self) -> nn.Module:
        """A plain copy of the model for deployment: quantized (BatchNorm-folded) weights, no wrappers.

        Its layer names match the keys of :meth:`calibration_config`; hand both to
        :func:`nncore.speedup.export_int8_onnx`.
        """
        self._require_wrapped("inference_model")
        return without_quantizer_wrappers(self.bound_model)


def without_quantizer_wrappers(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in which every quantizer wrapper is replaced by its
    :meth:`~nncore.wrapper.QuantizerModuleWrapper.inference_modules` (``model`` itself is not touched)."""
    wrappers = [m for m in model.modules() if isinstance(m, QuantizerModuleWrapper)]
    replacements: dict[str, nn.Module] = {}
    for wrapper in wrappers:
        replacements.update(wrapper.inference_modules())
    plain = copy.deepcopy(model, memo={id(w): nn.Identity() for w in wrappers})
    for name, module in replacements.items():
        set_submodule(plain, name, module)
    return plain
