"""Files nncore writes and reads: atomic writes, mask files, safe loading."""
from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

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


def load_torch(path: PathLike, what: str) -> Any:
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
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if "Unsupported global" in str(exc):
            raise ArtifactError(f"{what} {str(path)!r} cannot be read safely: it holds Python objects other than "
                                "tensors, and loading them could run code") from exc
        raise ArtifactError(f"{what} {str(path)!r}: not a {what} (truncated / empty / not a torch file)") from exc


MaskDict = dict[str, dict[str, torch.Tensor | None]]


def check_masks(masks: Any, source: str) -> MaskDict:
    """Return ``masks`` if it maps module names to ``{'weight': Tensor, 'bias': Tensor | None}``.

    :raises ArtifactError: naming ``source`` and the first entry that is wrong.
    """
    if not isinstance(masks, dict):
        raise ArtifactError(f"{source}: not a mask file: expected a dict of module name -> masks, got {type(masks).__name__}")
    for name, entry in masks.items():
        if not isinstance(name, str):
            raise ArtifactError(f"{source}: not a mask file: key {name!r} is not a module name")
        if not isinstance(entry, dict) or not isinstance(entry.get("weight"), torch.Tensor):
            raise ArtifactError(f"{source}: not a mask file: entry {name!r} has no 'weight' tensor")
        bias = entry.get("bias")
        if bias is not None and not isinstance(bias, torch.Tensor):
            raise ArtifactError(f"{source}: not a mask file: entry {name!r} has a 'bias' that is not a tensor")
    return masks


def load_masks(path_or_masks: PathLike | MaskDict) -> MaskDict:
    """A mask dict from a file written by ``export_model(mask_path=...)``, or checked as given."""
    if isinstance(path_or_masks, dict):
        return check_masks(path_or_masks, "masks")
    return check_masks(load_torch(path_or_masks, "mask file"), f"mask file {str(path_or_masks)!r}")
