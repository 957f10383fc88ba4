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


def human_bytes(size: float) -> str:
    """``12.3 KiB`` / ``4.56 MiB``."""
    return f"{size / 1024:.1f} KiB" if size < 1024 ** 2 else f"{size / 1024 ** 2:.2f} MiB"


def ratio(value: float, reference: float) -> str:
    """``value / reference`` as ``0.25x``, with two significant digits below 0.1 (``0.0022x``)."""
    share = value / reference
    return f"{share:.2f}x" if share >= 0.1 or share == 0 else f"{share:.2g}x"


def _latency(metrics: dict[str, Any], key: str, digits: int) -> str:
    low, high = metrics[f"{key}_iqr_ms"]
    return f"{metrics[f'{key}_ms']:.{digits}f} ms ± {(high - low) / 2:.{digits}f}"


def _cells(metrics: dict[str, Any] | None, baseline: dict[str, Any]) -> dict[str, str]:
    if metrics is None:
        return {}
    cells = {"accuracy": f"{metrics['accuracy'] * 100:.2f}%", "size_bytes": human_bytes(metrics["size_bytes"])}
    for key, digits in (("latency", 3), ("batch_latency", 2)):
        if f"{key}_ms" in metrics:
            cells[f"{key}_ms"] = _latency(metrics, key, digits)
    for key in ("params", "flops"):
        if key in metrics:
            mark = "~" if metrics.get("estimated") else ""
            cells[key] = f"{mark}{metrics[key]:,} ({ratio(metrics[key], baseline[key])})" if baseline[key] else str(metrics[key])
    return cells


def row_labels(threads: int) -> tuple[tuple[str, str], ...]:
    """``(metric key, label)`` of each table row."""
    on = f"{threads} thread{'s' if threads != 1 else ''}"
    return (("accuracy", "accuracy (test)"), ("params", "params"), ("flops", "FLOPs (MACs)"),
            ("latency_ms", f"CPU latency (batch 1, {on})"),
            ("batch_latency_ms", f"CPU latency (batch {LATENCY_BATCH}, {on})"),
            ("size_bytes", "file size"))


def columns_of(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(column name, metrics)`` of each compared model: baseline, compressed, int8 when there is one."""
    columns = [("baseline", report["baseline"]), ("compressed", report["compressed"])]
    if report.get("int8"):
        columns.append(("int8 (onnxruntime)", report["int8"]))
    return columns


def comparison_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the before/after table."""
    columns = columns_of(report)
    cells = [_cells(metrics, report["baseline"]) for _, metrics in columns]
    rows = [[label, *(c.get(key, "-") for c in cells)] for key, label in row_labels(report["threads"])]
    return ["", *(name for name, _ in columns)], rows


def latency_note(report: dict[str, Any]) -> str:
    """How the latencies were measured."""
    runs = report["baseline"]["latency_runs"]
    batch_runs = report["baseline"]["batch_latency_runs"]
    return (f"Latency: median of {runs} (batch 1) and {batch_runs} (batch {LATENCY_BATCH}) runs per model, "
            "interleaved across the models; ± half the interquartile range.")


def markdown_report(report: dict[str, Any]) -> str:
    """``report.md``: the table, the per-layer sparsity and weight reduction, and the notes."""
    header, rows = comparison_rows(report)
    lines = [f"# nncore compress: {report['model']} on {report['data']}", "",
             f"algorithm `{report['algo']}`, config_list `{json.dumps(report['config_list'])}`", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", latency_note(report)]
    lines += ["", "| layer | mask sparsity | weights removed | weights zero, kept |", "|---|---|---|---|"]
    for name, reduction in report["weight_reduction"].items():
        mask = report["layer_sparsity"].get(name)
        lines.append(f"| {name} | {'-' if mask is None else f'{mask:.2%}'} | {reduction['removed']:.2%} | "
                     f"{reduction['zero']:.2%} |")
    if report["compressed"].get("estimated"):
        lines += ["", "Figures marked ~ are estimates from the masks (no speedup)."]
    lines += ["", "## Notes", *(f"- {note}" for note in report["notes"])] if report["notes"] else []
    lines += ["", "## Files", *(f"- `{name}`" for name in report["artifacts"])]
    return "\n".join(lines) + "\n"
