"""Speedup on the torchvision classification zoo: does every model still shrink exactly, and train after?

Needs torchvision (it says so and exits without it). Run from the repository root; the speedup engine
is whichever ``nncore`` is first on ``PYTHONPATH``, so two engines can be compared on the same masks:

    PYTHONPATH=. /work/tvenv/bin/python benchmarks/speedup_zoo.py --json new.json --masks-dir /tmp/zoo_masks
    PYTHONPATH=/path/to/old/checkout /work/tvenv/bin/python benchmarks/speedup_zoo.py --json old.json \\
        --masks-dir /tmp/zoo_masks
    /work/tvenv/bin/python benchmarks/speedup_zoo.py --compare old.json new.json

(The second run can go at the same time as the first with ``--wait-masks 3600``: it waits for each
model's masks. ``--resume`` continues an interrupted run from its ``--json``.)

For every model of ``torchvision.models.list_models(module=torchvision.models)`` (or ``--models``), in
its own subprocess (``--timeout`` seconds each): build it with random weights (seed 0), compute masks of
nncore's ``L1FilterPruner`` at 50% of every Conv2d's filters with ``dependency_aware=True`` (as
``benchmarks/speedup.py``) on a 1x3x224x224 input (Inception-v3: 299x299), or load them from ``--masks-dir`` when a previous run
saved them there (so both engines speed up the very same masks), then run ``ModelSpeedup`` and record:
ok/failed, parameters before/after, the maximum relative difference (max |a - b| / max |b|) between the
sped-up and the masked model on two inputs (batch 1 and 2), the speedup seconds, how the model was
captured, and whether one forward + backward in train mode works after the speedup (GoogLeNet's and
Inception-v3's auxiliary heads run only then). ``--compare`` lists every model that sped up exactly
(relative difference <= 1e-4, fewer parameters) with the first engine and does not with the second.

``--transformers`` instead checks the capture on ``vit_b_16``, ``swin_t`` and ``convnext_tiny``:
the attention groups found, 50% of the MLP neurons (``L1FilterPruner`` on Linear layers) against the
masked model, and 25% of the hidden size (``HiddenSizePruner``): parameters after and a forward that runs.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
from torch import nn

from bench_utils import count_params, load_average, seed_everything  # noqa: E402

try:
    import nncore  # noqa: F401  (the engine under test: whichever is first on PYTHONPATH)
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

warnings.filterwarnings("ignore")
EXACT = 1e-4
TRANSFORMERS = ("vit_b_16", "swin_t", "convnext_tiny")
INPUT_SIZE = {"inception_v3": 299}  # its auxiliary head (train mode) needs 299x299; every other model 224x224


def engine_description() -> str:
    import nncore
    root = Path(nncore.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h %s"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown commit"
    return f"{root} ({commit[:70]})"


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict) -> None:
    for name, entry in masks.items():
        module = model.get_submodule(name)
        for key in ("weight", "bias"):
            if entry.get(key) is not None:
                getattr(module, key).mul_(entry[key].to(getattr(module, key).dtype))


def main_output(output):
    """The logits of a model's output (GoogLeNet/Inception return named tuples in train mode)."""
    return output if isinstance(output, torch.Tensor) else output[0]


def relative_difference(result: torch.Tensor, reference: torch.Tensor) -> float:
    if result.shape != reference.shape:
        return float("inf")
    return float((result - reference).abs().max() / reference.abs().max().clamp_min(1e-12))


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def zoo_masks(model: nn.Module, name: str, x: torch.Tensor, masks_dir: Path | None,
              wait: float = 0) -> tuple[dict, str]:
    """Dependency-aware L1 filter masks at 50% on every Conv2d, saved to / loaded from ``masks_dir``
    (waiting up to ``wait`` seconds for another run to save them; a ``.failed`` file there says that
    run could not make them, and then this run makes its own)."""
    path = masks_dir / f"{name}.pt" if masks_dir else None
    deadline = time.monotonic() + wait
    while path is not None and not path.exists() and not path.with_suffix(".failed").exists() \
            and time.monotonic() < deadline:
        time.sleep(10)
    if path is not None and path.exists():
        return torch.load(path, weights_only=True), "loaded"
    from nncore.builtin_pruners import L1FilterPruner
    try:
        pruner = L1FilterPruner(copy.deepcopy(model), [{"sparsity": 0.5, "op_types": ["Conv2d"]}],
                                dependency_aware=True, dummy_input=x)
        pruner.compress()
    except Exception as exc:
        if path is not None and not path.with_suffix(".failed").exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_suffix(".failed").write_text(error_text(exc))
        raise
    masks = pruner.masks()
    if path is not None and not path.with_suffix(".failed").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(masks, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
    return masks, "computed"


def train_step(model: nn.Module, x: torch.Tensor) -> str:
    """One forward + backward in train mode; 'ok' or the error."""
    try:
        model.train()
        output = model(x)
        tensors = [output] if isinstance(output, torch.Tensor) else [t for t in output if isinstance(t, torch.Tensor)]
        sum(t.float().mean() for t in tensors).backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        return "ok" if not missing else f"ok ({len(missing)} parameters without gradient)"
    except Exception as exc:  # report, don't stop
        return "failed: " + error_text(exc)
    finally:
        model.eval()


def zoo_worker(name: str, masks_dir: Path | None, wait: float) -> dict:
    import torchvision
    from nncore.speedup import ModelSpeedup
    torch.set_num_threads(2)
    seed_everything(0)
    record = {"model": name}
    model = torchvision.models.get_model(name, weights=None).eval()
    size = INPUT_SIZE.get(name, 224)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    x2 = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    record["params_before"] = count_params(model)
    try:
        masks, record["masks"] = zoo_masks(model, name, x, masks_dir, wait)
    except Exception as exc:
        record.update(status="masks failed", error=error_text(exc))
        return record
    reference = copy.deepcopy(model)
    apply_masks(reference, masks)
    speedup = ModelSpeedup(model, x, masks)
    start = time.perf_counter()
    try:
        speedup.speedup_model()
    except Exception as exc:
        record.update(status="failed", error=error_text(exc), speedup_s=time.perf_counter() - start,
                      trace=traceback.format_exc()[-1500:])
        return record
    record["speedup_s"] = time.perf_counter() - start
    record["params_after"] = count_params(model)
    summary = getattr(speedup, "summary", None)
    notes = list(getattr(summary, "notes", ()) or ())
    record["capture"] = "fx" if any("torch.fx" in n and "cannot" not in n for n in notes) else (
        "dispatch" if any("recording" in n for n in notes) else "-")
    with torch.no_grad():
        record["max_rel_diff"] = relative_difference(main_output(model(x)), main_output(reference(x)))
    record["status"] = "ok"
    record["train"] = train_step(model, x2)
    return record


def transformer_worker(name: str) -> dict:
    """Capture checks on torchvision's transformers: heads found, MLP neurons, hidden size."""
    import torchvision
    from nncore.speedup import ModelSpeedup, find_attention_groups
    torch.set_num_threads(2)
    seed_everything(0)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    dense = torchvision.models.get_model(name, weights=None).eval()
    record = {"model": name, "params_before": count_params(dense)}
    try:
        record["attention_groups"] = len(find_attention_groups(dense, x))
    except Exception as exc:
        record["attention_groups"] = "failed: " + error_text(exc)
    mlp = [n for n, m in dense.named_modules()
           if isinstance(m, nn.Linear) and any(k in n for k in ("mlp.0", "mlp.linear_1", "block.3"))]
    record["mlp_layers"] = len(mlp)
    for label, make in (("mlp", lambda m: _neuron_masks(m, mlp)), ("hidden", lambda m: _hidden_masks(m, x))):
        model = copy.deepcopy(dense)
        try:
            masks = make(model)
            reference = copy.deepcopy(model)
            apply_masks(reference, masks)
            speedup = ModelSpeedup(model, x, masks)
            start = time.perf_counter()
            speedup.speedup_model()
            seconds = time.perf_counter() - start
            with torch.no_grad():
                out, ref = main_output(model(x)), main_output(reference(x))
            difference = relative_difference(out, ref) if label == "mlp" else None
            notes = list(getattr(speedup.summary, "notes", ()) or ())
            record[label] = {"status": "ok", "params_after": count_params(model), "speedup_s": seconds,
                             "max_rel_diff": difference, "runs": bool(torch.isfinite(out).all()),
                             "capture": notes[0][:40] if notes else "-", "kept_by": dict(speedup.summary.kept_by)}
        except Exception as exc:
            record[label] = {"status": "failed: " + error_text(exc)}
    return record


def _neuron_masks(model: nn.Module, names: list[str]) -> dict:
    from nncore.builtin_pruners import L1FilterPruner
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"], "op_names": names}])
    pruner.compress()
    masks = pruner.masks()
    pruner.unwrap_model()
    return masks


def _hidden_masks(model: nn.Module, x: torch.Tensor) -> dict:
    from nncore.builtin_pruners import HiddenSizePruner
    pruner = HiddenSizePruner(model, [{"sparsity": 0.25, "op_types": ["default"]}], dummy_input=x)
    pruner.compress()
    masks = pruner.masks()
    pruner.unwrap_model()
    return masks


def run_in_subprocess(arguments: list[str], timeout: float) -> dict:
    command = [sys.executable, __file__] + arguments
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"status": f"crashed (exit {done.returncode}): {tail[0][:200]}"}
    return json.loads(lines[-1])


def fmt_diff(value) -> str:
    return "-" if value is None else f"{value:.1e}"


def run_zoo(args: argparse.Namespace) -> None:
    import torchvision
    names = args.models.split(",") if args.models else torchvision.models.list_models(module=torchvision.models)
    print(f"# speedup zoo: engine {engine_description()}; torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}; {load_average()}\n")
    print("| model | status | params before | params after | max rel diff | speedup s | capture | train fwd+bwd |")
    print("|---|---|---:|---:|---:|---:|---|---|")
    records, done = [], set()
    if args.json and args.resume and Path(args.json).exists():
        records = json.loads(Path(args.json).read_text())["records"]
        done = {r["model"] for r in records}
        print(f"(resuming: {len(done)} models already in {args.json})")
    for name in names:
        if name in done:
            continue
        worker = ["--worker", name, "--wait-masks", str(args.wait_masks)] + (
            ["--masks-dir", args.masks_dir] if args.masks_dir else [])
        record = {"model": name, **run_in_subprocess(worker, args.timeout)}
        records.append(record)
        status = record["status"] if record["status"] == "ok" else f"{record['status']} {record.get('error', '')}"
        print(f"| {name} | {status} | {record.get('params_before', 0):,} | {record.get('params_after', 0):,} | "
              f"{fmt_diff(record.get('max_rel_diff'))} | {record.get('speedup_s', float('nan')):.2f} | "
              f"{record.get('capture', '-')} | {record.get('train', '-')} |", flush=True)
        if args.json:  # after every model, so that an interrupted run keeps what it measured
            Path(args.json).write_text(json.dumps({"engine": engine_description(), "records": records}, indent=1))
    print(f"\n{load_average()}")


def exact(record: dict) -> bool:
    return (record.get("status") == "ok" and record.get("max_rel_diff", float("inf")) <= EXACT
            and record.get("params_after", 0) < record.get("params_before", 0))


def compare(old_path: str, new_path: str) -> None:
    old, new = (json.loads(Path(p).read_text()) for p in (old_path, new_path))
    new_by_name = {r["model"]: r for r in new["records"]}
    print(f"# old: {old['engine']}\n# new: {new['engine']}\n")
    print("| model | old status | new status | params after old | params after new | max rel diff old | "
          "max rel diff new | speedup s old | speedup s new | train old | train new | verdict |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---|")
    counts = {}
    for o in old["records"]:
        n = new_by_name.get(o["model"], {"status": "missing"})
        if exact(o) and not exact(n):
            verdict = "REGRESSION"
        elif exact(o) and n.get("params_after", 0) > o.get("params_after", 0):
            verdict = "removes less"
        elif not exact(o) and exact(n):
            verdict = "fixed"
        elif o.get("train", "").startswith("ok") and not n.get("train", "").startswith("ok"):
            verdict = "REGRESSION (train)"
        elif not o.get("train", "").startswith("ok") and n.get("train", "").startswith("ok"):
            verdict = "fixed (train)"
        else:
            verdict = "same"
        counts[verdict] = counts.get(verdict, 0) + 1

        def status(r):
            return r["status"] if r["status"] == "ok" else f"{r['status']} {r.get('error', '')}"[:160]
        print(f"| {o['model']} | {status(o)} | {status(n)} | {o.get('params_after', 0):,} | "
              f"{n.get('params_after', 0):,} | {fmt_diff(o.get('max_rel_diff'))} | {fmt_diff(n.get('max_rel_diff'))} | "
              f"{o.get('speedup_s', float('nan')):.2f} | {n.get('speedup_s', float('nan')):.2f} | "
              f"{o.get('train', '-')[:60]} | {n.get('train', '-')[:60]} | {verdict} |")
    print("\n" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))


def run_transformers(args: argparse.Namespace) -> None:
    print(f"# capture on torchvision transformers: engine {engine_description()}; {load_average()}\n")
    print("| model | attention groups | MLP layers | MLP 50%: params after | max rel diff | speedup s | "
          "hidden 25%: params after | forward runs | speedup s | capture |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---|")
    for name in TRANSFORMERS:
        r = {"model": name, **run_in_subprocess(["--transformer-worker", name], args.timeout)}
        mlp, hidden = r.get("mlp", {}), r.get("hidden", {})

        def cell(part, key, fmt="{:,}"):
            return fmt.format(part[key]) if part.get("status") == "ok" and part.get(key) is not None \
                else part.get("status", r.get("status", "-"))
        print(f"| {name} | {r.get('attention_groups', '-')} | {r.get('mlp_layers', '-')} | {cell(mlp, 'params_after')} "
              f"| {cell(mlp, 'max_rel_diff', '{:.1e}')} | {cell(mlp, 'speedup_s', '{:.1f}')} | "
              f"{cell(hidden, 'params_after')} | {cell(hidden, 'runs', '{}')} | {cell(hidden, 'speedup_s', '{:.1f}')} | "
              f"{cell(mlp, 'capture', '{}')} |")
        for label, part in (("MLP", mlp), ("hidden", hidden)):
            if part.get("kept_by"):
                print(f"|   {name} {label}: kept by | {part['kept_by']} |")
    print(f"\n{load_average()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated torchvision model names (default: all)")
    parser.add_argument("--masks-dir", help="save masks here, or load them when a previous run saved them")
    parser.add_argument("--json", help="write the records to this file (for --compare)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per model")
    parser.add_argument("--resume", action="store_true", help="keep the models already in --json, run the others")
    parser.add_argument("--wait-masks", type=float, default=0,
                        help="seconds to wait for a run in parallel to save a model's masks in --masks-dir")
    parser.add_argument("--compare", nargs=2, metavar=("OLD_JSON", "NEW_JSON"))
    parser.add_argument("--transformers", action="store_true", help="capture checks on ViT, Swin, ConvNeXt")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--transformer-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    try:
        import torchvision  # noqa: F401
    except ImportError:
        print("speedup_zoo needs torchvision (pip install torchvision); nncore itself does not.")
        sys.exit(0)
    if args.worker:
        print(json.dumps(zoo_worker(args.worker, Path(args.masks_dir) if args.masks_dir else None, args.wait_masks)))
    elif args.transformer_worker:
        print(json.dumps(transformer_worker(args.transformer_worker)))
    elif args.transformers:
        run_transformers(args)
    else:
        run_zoo(args)


if __name__ == "__main__":
    main()
