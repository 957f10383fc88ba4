"""The ``--output`` folder of ``nncore compress``: what a previous run left goes, what this run
writes is listed.

A rerun into the same folder first removes the files the previous run listed in its
``report.json`` and any file named like one the job writes; the user's other files stay.
"""
from __future__ import annotations

import json
from pathlib import Path

JOB_FILES = (
    "model_baseline.pt", "model_pruned.pt", "masks.pt", "model_speedup.pt", "model_qat.pt", "calibration.pt",
    "model_int8.onnx", "sparsity.png", "comparison.png", "sensitivity.csv", "sensitivity.png",
    "search_history.json", "search_result.json", "report.json", "report.md",
)


def previous_artifacts(folder: Path) -> set[str]:
    """File names a previous job listed in ``folder/report.json`` (none when it is unreadable)."""
    try:
        listed = json.loads((folder / "report.json").read_text(encoding="utf-8")).get("artifacts", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {name for name in listed if isinstance(name, str) and Path(name).name == name}


def clear_previous_run(folder: Path) -> list[str]:
    """Remove what a previous job left in ``folder``; returns the names removed."""
    removed = []
    for name in sorted(previous_artifacts(folder) | set(JOB_FILES)):
        path = folder / name
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(name)
    return removed


def files_in(folder: Path) -> set[str]:
    """Names of the plain files directly in ``folder``."""
    return {path.name for path in folder.iterdir() if path.is_file() and not path.name.startswith(".")}
