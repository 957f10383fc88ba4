"""The ``--output`` folder of ``nncore compress``: what a previous run left goes, what this run
writes is listed.

A rerun into the same folder first removes the files (and an algorithm's folders, listed with a
trailing ``/``) the previous run listed in its ``report.json``, and any file named like one the
job writes; the user's other files stay.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

JOB_FILES = (
    "model_baseline.pt", "model_pruned.pt", "masks.pt", "model_speedup.pt", "model_qat.pt", "model_ptq.pt", "calibration.pt",
    "model_int8.onnx", "sparsity.png", "comparison.png", "sensitivity.csv", "sensitivity.png",
    "search_history.json", "search_result.json", "report.json", "report.md",
)


def previous_artifacts(folder: Path) -> set[str]:
    """File names a previous job listed in ``folder/report.json`` (none when it is unreadable)."""
    try:
        listed = json.loads((folder / "report.json").read_text(encoding="utf-8")).get("artifacts", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {name for name in listed  # plain names in the folder only: never a path, '..' or a hidden file
            if isinstance(name, str) and not name.startswith(".") and Path(name).name == name.rstrip("/") != ""}


def clear_previous_run(folder: Path) -> list[str]:
    """Remove what a previous job left in ``folder``; returns the names removed."""
    removed = []
    for name in sorted(previous_artifacts(folder) | set(JOB_FILES)):
        path = folder / name.rstrip("/")
        if name.endswith("/") and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.is_file() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def files_in(folder: Path) -> set[str]:
    """Names of the files directly in ``folder``, folders with a trailing ``/`` (hidden ones left out)."""
    return {path.name + ("/" if path.is_dir() else "") for path in folder.iterdir() if not path.name.startswith(".")}
