"""Files nncore writes and reads: atomic writes, mask files, state dicts, safe loading.

A mask file is ``{module name: {'weight': mask, 'bias': mask or None}}``. nncore adds one
reserved entry, :data:`MASK_METADATA_KEY`, holding what it knows about the masks (today the
dummy input's structure, shapes and dtypes, so that ``apply_compression_results(model, path)``
can shrink the model on its own). Mask files without it (older ones, NNI's) and plain mask dicts
load as before; :func:`load_masks` returns only the masks and checks them strictly.
"""
from __future__ import annotations

import io
import os
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from nncore.errors import ArtifactError

PathLike = str | os.PathLike


def atomic_write(path: PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write a file so that ``path`` holds either the old content or the complete new one.

    ``write`` receives a binary file object of a temporary file in the same directory,
    which replaces ``path`` only after it was written and flushed to disk.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the usual permissions
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_torch(obj: Any, path: PathLike) -> Path:
    """``torch.save`` made atomic."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def load_torch(path: PathLike, what: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: never runs code from the file.

    :raises ArtifactError: the file is missing, a directory, not a torch file (truncated, empty,
        other bytes), or holds Python objects other than tensors and plain containers.
    """
    if Path(path).is_dir():
        raise ArtifactError(f"{what} {str(path)!r} is a directory, not a file")
    if not Path(path).is_file():
        raise ArtifactError(f"{what} {str(path)!r} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol before refusing what is unsafe
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu" if map_location is None else map_location, weights_only=True)
    except Exception as exc:
        if "Unsupported global" in str(exc):
            raise ArtifactError(f"{what} {str(path)!r} cannot be read safely: it holds Python objects other than "
                                "tensors, and loading them could run code") from exc
        raise ArtifactError(f"{what} {str(path)!r}: not a {what} (truncated / empty / not a torch file)") from exc


# -- state dicts ----------------------------------------------------------------------------------

def keep_metadata(state: Mapping[str, Any], source: Mapping[str, Any],
                  rename: Callable[[str], str | None] = lambda prefix: prefix) -> "OrderedDict[str, Any]":
    """``state`` as an ``OrderedDict`` carrying ``source._metadata`` (each module's version).

    ``torch.nn.Module.state_dict()`` records every module's ``_version`` in ``_metadata``; modules
    such as torchvision's MNASNet read it back in ``_load_from_state_dict`` and refuse a state dict
    without it. ``rename`` maps each module prefix of ``source`` to its prefix in ``state``
    (``None`` drops it), for state dicts whose keys were rewritten (wrappers removed).
    """
    result = OrderedDict(state)
    metadata = getattr(source, "_metadata", None)
    if metadata is not None:
        renamed: "OrderedDict[str, Any]" = OrderedDict()
        for prefix, value in metadata.items():
            new = rename(prefix)
            if new is not None and new not in renamed:
                renamed[new] = dict(value)
        result._metadata = renamed  # type: ignore[attr-defined]
    return result


def copy_state_dict(model: torch.nn.Module) -> "OrderedDict[str, Any]":
    """A detached copy of ``model.state_dict()`` that keeps its ``_metadata`` (module versions)."""
    state = model.state_dict()
    return keep_metadata({key: value.detach().clone() for key, value in state.items()}, state)


# -- mask files -----------------------------------------------------------------------------------

MaskDict = dict[str, dict[str, torch.Tensor | None]]


def check_masks(masks: Any, source: str) -> MaskDict:
    """Return ``masks`` if it maps module names to ``{parameter name: Tensor | None}`` with at least
    one tensor each (``{'weight': Tensor, 'bias': Tensor | None}`` for most layers; other parameter
    names such as ``in_proj_weight`` for layers whose parameters are named otherwise).

    :raises ArtifactError: naming ``source`` and the first entry that is wrong.
    """
    if not isinstance(masks, dict):
        raise ArtifactError(f"{source}: not a mask file: expected a dict of module name -> masks, got {type(masks).__name__}")
    for name, entry in masks.items():
        if not isinstance(name, str):
            raise ArtifactError(f"{source}: not a mask file: key {name!r} is not a module name")
        if not isinstance(entry, dict) or not any(isinstance(mask, torch.Tensor) for mask in entry.values()):
            raise ArtifactError(f"{source}: not a mask file: entry {name!r} has no mask tensor "
                                "(expected a dict of parameter name -> mask, e.g. {'weight': tensor})")
        for key, mask in entry.items():
            if not isinstance(key, str) or not (mask is None or isinstance(mask, torch.Tensor)):
                raise ArtifactError(f"{source}: not a mask file: entry {name!r} has a {key!r} mask that is not a tensor")
    return masks


MASK_METADATA_KEY = "__nncore_metadata__"
"""The reserved entry of a mask file that holds nncore's metadata (never a module name)."""


def read_mask_file(path_or_masks: PathLike | Mapping[str, Any], map_location: Any = None) -> tuple[MaskDict, dict[str, Any]]:
    """The masks and the metadata of a mask file (or of a mask dict, as given).

    :returns: ``(masks, metadata)``; ``metadata`` is ``{}`` for files without it.
    :raises ArtifactError: not a mask file, or the metadata entry is not a dict.
    """
    if isinstance(path_or_masks, Mapping):
        content, source = path_or_masks, "masks"
    else:
        content, source = load_torch(path_or_masks, "mask file", map_location), f"mask file {str(path_or_masks)!r}"
    if isinstance(content, Mapping) and MASK_METADATA_KEY in content:
        metadata = content[MASK_METADATA_KEY]
        if not isinstance(metadata, dict):
            raise ArtifactError(f"{source}: the {MASK_METADATA_KEY!r} entry must be a dict, got {type(metadata).__name__}")
        content = {name: entry for name, entry in content.items() if name != MASK_METADATA_KEY}
        return check_masks(content, source), metadata
    return check_masks(dict(content) if isinstance(content, Mapping) else content, source), {}


def load_masks(path_or_masks: PathLike | MaskDict) -> MaskDict:
    """A mask dict from a file written by ``export_model(mask_path=...)``, or checked as given
    (nncore's metadata entry, if any, left out)."""
    return read_mask_file(path_or_masks)[0]


def mask_file_content(masks: MaskDict, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a mask file holds: the masks, plus the metadata entry when there is any."""
    return {**masks, MASK_METADATA_KEY: dict(metadata)} if metadata else dict(masks)


# -- example inputs --------------------------------------------------------------------------------

def input_spec(example: Any) -> dict[str, Any] | None:
    """The structure, shapes and dtypes of a model input, as plain data to store in a file.

    A tensor gives ``{'shape': [...], 'dtype': 'float32'}``, a tuple or list of inputs
    ``{'args': [...]}``, a dict of keyword inputs ``{'kwargs': {...}}``; ``None`` when any part
    is not a tensor (then it cannot be rebuilt).
    """
    if isinstance(example, torch.Tensor):
        return {"shape": list(example.shape), "dtype": str(example.dtype).removeprefix("torch.")}
    if isinstance(example, (tuple, list)) and example:
        parts = [input_spec(item) for item in example]
        return None if any(part is None for part in parts) else {"args": parts}
    if isinstance(example, Mapping) and example and all(isinstance(key, str) for key in example):
        parts = {key: input_spec(value) for key, value in example.items()}
        return None if any(part is None for part in parts.values()) else {"kwargs": parts}
    return None


def example_input(spec: Mapping[str, Any], device: torch.device | str = "cpu") -> Any:
    """An input built from :func:`input_spec`'s description: seeded normal values for floating
    dtypes, zeros for integers (valid token ids), ones for booleans (attention masks).

    :raises ArtifactError: the description is not one :func:`input_spec` writes.
    """
    generator = torch.Generator().manual_seed(0)

    def build(part: Any) -> Any:
        if isinstance(part, Mapping) and "shape" in part:
            dtype = getattr(torch, str(part.get("dtype", "float32")), None)
            shape = part["shape"]
            if not isinstance(dtype, torch.dtype) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise ArtifactError(f"not an input description: {dict(part)!r}")
            if dtype.is_floating_point:
                return torch.randn(*shape, generator=generator).to(dtype=dtype, device=device)
            if dtype == torch.bool:
                return torch.ones(*shape, dtype=dtype, device=device)
            return torch.zeros(*shape, dtype=dtype, device=device)
        if isinstance(part, Mapping) and isinstance(part.get("args"), list):
            return tuple(build(item) for item in part["args"])
        if isinstance(part, Mapping) and isinstance(part.get("kwargs"), Mapping):
            return {key: build(value) for key, value in part["kwargs"].items()}
        raise ArtifactError(f"not an input description: {part!r}")

    return build(spec)
