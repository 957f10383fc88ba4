"""What a job writes and prints: ``report.json``, ``report.md`` and the before/after table."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nncore.artifacts import atomic_write
from nncore.jobs.measure import LATENCY_BATCH


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    data = text.encode("utf-8")
    atomic_write(path, lambda handle: handle.write(data))


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
