"""Transformers speedup, side by side: nncore vs Torch-Pruning 1.6 (random weights, built from configs).

Run from the repository root with a Python that has ``transformers`` and ``torch-pruning``:

    PYTHONPATH=. /work/peers/bin/python benchmarks/transformer_speedup.py bert  [--repeats 3] [--runs 10]
    PYTHONPATH=. /work/peers/bin/python benchmarks/transformer_speedup.py llama [--dtype float32] [--profile]

``bert``: BERT-base shape (12 layers, hidden 768, 12 heads, FFN 3072). Half the heads of every layer and
half the FFN neurons of every layer, hidden size kept. nncore: masks from its pruners (heads ranked by the
L1 norm of their Q/K/V weights, the groups named by hand through ``attention_name_groups``; FFN neurons by
the L1 norm of their rows), then ``ModelSpeedup``; timed from the dense model to the shrunk one.
Torch-Pruning, set up as its HF BERT example: ``MetaPruner`` with ``num_heads`` (named by hand),
``prune_num_heads=True``, ``prune_head_dims=False``, ``head_pruning_ratio=0.5``, ``pruning_ratio=0.5``
(the FFN), the embeddings and the pooler ignored so that the hidden size stays; then ``step()`` and the
head-count attribute fix. Both tools trace the same example input (``--trace-length`` tokens) and run in
this process, alternated ``--repeats`` times on fresh copies of one model; the table gives the median
seconds. Latency: batch 1, sequence 128, ``--threads`` threads, dense / nncore / Torch-Pruning interleaved
round by round (the order rotating); the gain is the median over rounds of the dense time divided by the
pruned time of the same round, per repeat and over all rounds.

``llama``: a 1.1B-parameter Llama shape (22 layers, hidden 2048, 32 heads / 4 KV heads, FFN 5632,
vocab 32000). MLP 50% (gate/up/down neurons of every layer) and hidden size 25%. Each tool runs in its own
subprocess, one after the other, which builds the model, prunes it and reports: the model's own size
(bytes of its parameters), RSS after building, peak RSS while making masks (nncore) and while pruning
(VmHWM, reset through ``/proc/self/clear_refs`` before each stage), and seconds. ``--profile`` also
records nncore's RSS and peak at each step of the speedup engine (patched in from outside; the engine is
unchanged). Needs about 2.5x the model's size free (fp32: 4.4 GB model); check ``free -g`` first.

Everything is seeded (torch, numpy, random: 0). The load average is printed with each table: the
machine is shared, so only the ratios measured side by side in one process are meaningful.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from bench_utils import count_params, load_average, seed_everything  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's nncore

from nncore.speedup import ModelSpeedup, find_attention_groups  # noqa: E402
from nncore.speedup.masks import apply_masks  # noqa: E402

warnings.filterwarnings("ignore")


def relative_difference(result: torch.Tensor, reference: torch.Tensor) -> float:
    return float((result - reference).abs().max() / reference.abs().max())


# -- masks (nncore) -------------------------------------------------------------------------------

def _row_mask(module: nn.Module, dropped: torch.Tensor) -> dict:
    """A mask that zeros output rows ``dropped`` of a Linear layer (and of its bias)."""
    weight = module.weight.detach()
    keep = torch.ones(weight.shape[0], dtype=weight.dtype)
    keep[dropped] = 0
    return {"weight": keep[:, None].expand_as(weight).clone(), "bias": None if module.bias is None else keep}


def bert_attention_groups(model: nn.Module) -> list[list[str]]:
    """``[q, k, v, o]`` module names of every BERT attention layer, named by hand as a user would
    (Torch-Pruning is likewise given its ``num_heads`` by hand)."""
    return [[f"encoder.layer.{i}.attention.self.{p}" for p in ("query", "key", "value")]
            + [f"encoder.layer.{i}.attention.output.dense"] for i in range(len(model.encoder.layer))]


def head_masks(model: nn.Module, groups: list[list[str]], num_heads: int, sparsity: float) -> tuple[dict, str]:
    """Masks that prune ``sparsity`` of each attention layer's heads (l1_weight ranking)."""
    head_dim = model.get_submodule(groups[0][0]).out_features // num_heads
    try:
        from nncore.builtin_pruners import TransformerHeadPruner
    except ImportError:
        TransformerHeadPruner = None
    if TransformerHeadPruner is not None:
        pruner = TransformerHeadPruner(model, [{"sparsity": sparsity, "op_types": ["Linear"]}],
                                       head_hidden_dim=head_dim, attention_name_groups=groups,
                                       ranking_criterion="l1_weight")
        pruner.compress()
        masks = pruner.masks()
        pruner.unwrap_model()
        return masks, "TransformerHeadPruner"
    masks = {}  # hand-built fallback: NNI's l1_weight (sum over Q, K, V of each head's L1 norm)
    for q, k, v, _ in groups:
        projections = [model.get_submodule(name) for name in (q, k, v)]
        importance = sum(p.weight.detach().abs().view(num_heads, -1).sum(1) for p in projections)
        dropped = importance.argsort()[: int(num_heads * sparsity)]
        rows = (dropped[:, None] * head_dim + torch.arange(head_dim)).flatten()
        for name, projection in zip((q, k, v), projections):
            masks[name] = _row_mask(projection, rows)
    return masks, "hand-built (TransformerHeadPruner not on this branch)"


def neuron_masks(model: nn.Module, names: list[str], sparsity: float) -> tuple[dict, str]:
    """Masks that prune ``sparsity`` of the output neurons of Linear layers ``names`` (L1 ranking)."""
    from nncore.builtin_pruners import L1FilterPruner
    from nncore.errors import NncoreError
    try:
        pruner = L1FilterPruner(model, [{"sparsity": sparsity, "op_types": ["Linear"], "op_names": names}])
    except NncoreError:
        pruner = None
    if pruner is not None:
        pruner.compress()
        masks = pruner.masks()
        pruner.unwrap_model()
        return masks, "L1FilterPruner"
    masks = {}  # hand-built fallback: the L1 norm of each neuron's weight row
    for name in names:
        module = model.get_submodule(name)
        importance = module.weight.detach().abs().sum(1)
        masks[name] = _row_mask(module, importance.argsort()[: int(len(importance) * sparsity)])
    return masks, "hand-built (L1FilterPruner does not take Linear on this branch)"


def hidden_masks(model: nn.Module, inputs: dict, sparsity: float) -> tuple[dict, str]:
    """Masks on every norm of the residual stream that remove ``sparsity`` of the hidden channels."""
    from nncore.builtin_pruners import HiddenSizePruner
    pruner = HiddenSizePruner(model, [{"sparsity": sparsity, "op_types": ["default"]}], dummy_input=inputs)
    pruner.compress()
    masks = pruner.masks()
    pruner.unwrap_model()
    return masks, "HiddenSizePruner (l2 group importance)"


# -- BERT -----------------------------------------------------------------------------------------

def build_bert() -> nn.Module:
    import transformers
    seed_everything(0)
    config = transformers.BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                     intermediate_size=3072)
    config._attn_implementation = "sdpa"
    return transformers.BertModel(config).eval()


def bert_inputs(length: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1, 30522, (1, length), generator=generator)}


def nncore_bert(model: nn.Module, inputs: dict) -> dict:
    """Half the heads and half the FFN neurons, with nncore; returns timings, sources and masks."""
    start = time.perf_counter()
    masks, heads_from = head_masks(model, bert_attention_groups(model), model.config.num_attention_heads, 0.5)
    ffn = [f"encoder.layer.{i}.intermediate.dense" for i in range(len(model.encoder.layer))]
    more, ffn_from = neuron_masks(model, ffn, 0.5)
    masks.update(more)
    masked = time.perf_counter()
    ModelSpeedup(model, inputs, masks).speedup_model()
    end = time.perf_counter()
    return {"seconds": end - start, "masks_s": masked - start, "speedup_s": end - masked, "masks": masks,
            "sources": f"heads: {heads_from}; FFN: {ffn_from}"}


def torch_pruning_bert(model: nn.Module, inputs: dict) -> dict:
    """The same work with Torch-Pruning, set up as its HF BERT example (hidden size kept)."""
    import torch_pruning as tp
    from transformers.models.bert.modeling_bert import BertSelfAttention
    start = time.perf_counter()
    attentions = [m for m in model.modules() if isinstance(m, BertSelfAttention)]
    num_heads = {p: m.num_attention_heads for m in attentions for p in (m.query, m.key, m.value)}
    pruner = tp.pruner.MetaPruner(
        model, inputs, importance=tp.importance.MagnitudeImportance(p=1, group_reduction="mean"),
        pruning_ratio=0.5, num_heads=num_heads, prune_num_heads=True, prune_head_dims=False,
        head_pruning_ratio=0.5, output_transform=lambda out: out.last_hidden_state.sum(),
        ignored_layers=[model.embeddings, model.pooler])
    graph = time.perf_counter()
    pruner.step()
    for m in attentions:
        m.num_attention_heads = pruner.num_heads[m.query]
        m.all_head_size = m.query.out_features
    end = time.perf_counter()
    return {"seconds": end - start, "graph_s": graph - start, "step_s": end - graph}


def interleaved_latency_ms(models: list[nn.Module], inputs: dict, runs: int) -> list[list[float]]:
    """Milliseconds of each run of each model. The models run in turn, round by round, so that load drift
    hits all alike, and the order rotates from round to round (the model run right after the dense one
    is otherwise slower)."""
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for model in models:
            model(**inputs)
        for run in range(runs):
            for i in range(len(models)):
                index = (run + i) % len(models)
                start = time.perf_counter()
                models[index](**inputs)
                times[index].append((time.perf_counter() - start) * 1000)
    return times


def paired_gain(dense: list[float], pruned: list[float]) -> float:
    """Median over rounds of dense time / pruned time, each ratio taken within one round."""
    return statistics.median(d / p for d, p in zip(dense, pruned))


def run_bert(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    dense = build_bert()
    trace = bert_inputs(args.trace_length, seed=0)
    print(f"# BERT-base shape: 50% heads + 50% FFN neurons, hidden kept; {load_average()}, "
          f"torch threads {args.threads}, trace input 1x{args.trace_length}\n")
    stages: list = []
    if args.profile:
        profile_engine(stages)
    results: dict[str, list[dict]] = {"nncore": [], "torch-pruning": []}
    pruned: dict[str, nn.Module] = {}
    for repeat in range(args.repeats):  # alternate the tools so that load drift hits both alike
        for tool, run in (("nncore", nncore_bert), ("torch-pruning", torch_pruning_bert)):
            model = copy.deepcopy(dense)
            gc.collect()
            results[tool].append(run(model, trace))
            pruned[tool] = model
            print(f"  repeat {repeat + 1} {tool}: {results[tool][-1]['seconds']:.1f} s", flush=True)
    reference = copy.deepcopy(dense)
    apply_masks(reference, results["nncore"][-1]["masks"])
    differences = []
    with torch.no_grad():
        for seed in range(3):
            x = bert_inputs(128, seed=seed + 1)
            differences.append(relative_difference(pruned["nncore"](**x).last_hidden_state,
                                                   reference(**x).last_hidden_state))
    print(f"\nnncore masks from: {results['nncore'][-1]['sources']}")
    start = time.perf_counter()
    found = [[g.q, g.k, g.v, g.o] for g in find_attention_groups(dense, trace)]
    print(f"find_attention_groups (not used above; one capture): {time.perf_counter() - start:.2f} s, "
          f"{len(found)} groups, {'equal to' if found == bert_attention_groups(dense) else 'DIFFERENT from'} "
          "the hand-named ones\n")
    median = {tool: {key: statistics.median(r[key] for r in runs) for key in runs[0]
                     if key == "seconds" or key.endswith("_s")}
              for tool, runs in results.items()}
    before = count_params(dense)
    print(f"| tool | prune + speedup s (median of {args.repeats}) | parts (median s) | params before | "
          "params after | max rel diff vs masked model |")
    print("|---|---:|---|---:|---:|---:|")
    n, t = median["nncore"], median["torch-pruning"]
    print(f"| nncore | {n['seconds']:.2f} | masks {n['masks_s']:.2f} + speedup {n['speedup_s']:.2f} | {before:,} | "
          f"{count_params(pruned['nncore']):,} | {max(differences):.1e} |")
    print(f"| torch-pruning | {t['seconds']:.2f} | graph {t['graph_s']:.2f} + step {t['step_s']:.2f} | {before:,} | "
          f"{count_params(pruned['torch-pruning']):,} | - |")
    ratios = [a["seconds"] / b["seconds"] for a, b in zip(*results.values())]
    print(f"\nnncore time / torch-pruning time, median of the per-repeat ratios: {statistics.median(ratios):.2f} "
          f"(per repeat: {', '.join(f'{r:.2f}' for r in ratios)})")
    if stages:
        print_stages(stages[-len(stages) // args.repeats:])
    x = bert_inputs(128, seed=0)
    print(f"\nCPU latency, batch 1, sequence 128, {args.runs} interleaved runs per repeat; {load_average()}\n")
    print("| repeat | dense ms | nncore ms | torch-pruning ms | nncore gain | torch-pruning gain |")
    print("|---|---:|---:|---:|---:|---:|")
    pooled: list[list[float]] = [[], [], []]
    for repeat in range(args.repeats):
        times = interleaved_latency_ms([dense, pruned["nncore"], pruned["torch-pruning"]], x, args.runs)
        for bucket, new in zip(pooled, times):
            bucket.extend(new)
        base, ours, theirs = (statistics.median(t) for t in times)
        print(f"| {repeat + 1} | {base:.1f} | {ours:.1f} | {theirs:.1f} | {paired_gain(times[0], times[1]):.2f}x | "
              f"{paired_gain(times[0], times[2]):.2f}x |")
    base, ours, theirs = (statistics.median(t) for t in pooled)
    print(f"| all {len(pooled[0])} rounds | {base:.1f} | {ours:.1f} | {theirs:.1f} | "
          f"{paired_gain(pooled[0], pooled[1]):.2f}x | {paired_gain(pooled[0], pooled[2]):.2f}x |")
    print("\n(ms: medians; gain: median over rounds of the dense time / the pruned time of the same round)")
    print(f"\n{load_average()}")


# -- Llama 1.1B -----------------------------------------------------------------------------------

def build_llama(dtype: torch.dtype) -> nn.Module:
    import transformers
    seed_everything(0)
    config = transformers.LlamaConfig(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32,
                                      num_key_value_heads=4, intermediate_size=5632, vocab_size=32000,
                                      max_position_embeddings=2048, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return transformers.LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)


def memory_kb() -> tuple[int, int]:
    """(current RSS, peak RSS since the last reset), in kB."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def reset_peak() -> None:
    gc.collect()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def profile_engine(log: list) -> None:
    """Record RSS and peak after each step of nncore's speedup engine (wrapped from outside)."""
    from nncore.speedup import engine

    def traced(name, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            result = function(*args, **kwargs)
            rss, peak = memory_kb()
            log.append((name, time.perf_counter() - start, rss, peak))
            return result
        return wrapper

    engine.mask_weights = traced("mask_weights (masked copies of weights)", engine.mask_weights)
    engine.Analysis = traced("Analysis (capture + propagation)", engine.Analysis)
    for method, label in (("_shrink", "_shrink (sliced copies)"), ("_finish_masking", "_finish_masking")):
        setattr(engine.ModelSpeedup, method, traced(label, getattr(engine.ModelSpeedup, method)))
    engine.update_head_attributes = traced("update_head_attributes", engine.update_head_attributes)
    engine.ModelSpeedup._rewrite = traced("_rewrite", engine.ModelSpeedup._rewrite)


def print_stages(stages: list) -> None:
    kb_per_gib = 2 ** 20
    print("\n| nncore step (last run) | seconds | RSS after GiB | peak so far GiB |\n|---|---:|---:|---:|")
    for name, seconds, rss, peak in stages:
        print(f"| {name} | {seconds:.2f} | {rss / kb_per_gib:.2f} | {peak / kb_per_gib:.2f} |")
    print("(speedup time not in these steps: after _rewrite, the shrunk model's forward on the example input)")


def llama_worker(tool: str, dtype: torch.dtype, length: int, profile: bool) -> dict:
    torch.set_num_threads(2)
    model = build_llama(dtype)
    gc.collect()
    report = {"tool": tool, "params_before": count_params(model),
              "model_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}
    report["rss_built_kb"], report["peak_build_kb"] = memory_kb()
    inputs = {"input_ids": torch.randint(1, 32000, (1, length), generator=torch.Generator().manual_seed(0))}
    layers = model.model.layers
    if tool == "nncore":
        stages = []
        if profile:
            profile_engine(stages)
        reset_peak()
        start = time.perf_counter()
        masks, hidden_from = hidden_masks(model, inputs, 0.25)
        more, mlp_from = neuron_masks(model, [f"model.layers.{i}.mlp.gate_proj" for i in range(len(layers))], 0.5)
        masks.update(more)  # a gate mask: the coupled up_proj and down_proj follow in the speedup
        masked = time.perf_counter()
        report["rss_masks_kb"], report["peak_masks_kb"] = memory_kb()
        report["mask_bytes"] = sum(t.numel() * t.element_size() for e in masks.values() for t in e.values()
                                   if t is not None)
        reset_peak()
        ModelSpeedup(model, inputs, masks).speedup_model()
        end = time.perf_counter()
        report["rss_pruned_kb"], report["peak_prune_kb"] = memory_kb()
        report.update(masks_s=masked - start, prune_s=end - masked, stages=stages,
                      sources=f"hidden: {hidden_from}; MLP: {mlp_from}")
    else:
        import torch_pruning as tp
        reset_peak()
        start = time.perf_counter()
        attentions = [layer.self_attn for layer in layers]
        pruner = tp.pruner.MetaPruner(  # as its prune_llm.py, the attention's heads and head dims kept
            model, example_inputs=inputs, importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=0.25, pruning_ratio_dict={layer.mlp.gate_proj: 0.5 for layer in layers},
            ignored_layers=[model.lm_head] + [p for a in attentions for p in (a.q_proj, a.k_proj, a.v_proj)],
            output_transform=lambda out: out.logits.sum())
        pruner.step()
        model.config.hidden_size = model.lm_head.in_features
        model.config.intermediate_size = layers[0].mlp.gate_proj.out_features
        del pruner
        end = time.perf_counter()
        report["rss_pruned_kb"], report["peak_prune_kb"] = memory_kb()
        report.update(masks_s=0.0, prune_s=end - start)
    report["seconds"] = end - start
    report["params_after"] = count_params(model)
    report["shapes"] = {"hidden": model.lm_head.in_features, "ffn": layers[0].mlp.gate_proj.out_features,
                        "q": tuple(layers[0].self_attn.q_proj.weight.shape),
                        "k": tuple(layers[0].self_attn.k_proj.weight.shape)}
    with torch.no_grad():
        logits = model(**inputs).logits
    report["runs"] = bool(torch.isfinite(logits).all()) and logits.shape == (1, length, 32000)
    return report


def run_llama(args: argparse.Namespace) -> None:
    gib = 2 ** 30
    print(f"# Llama 1.1B shape: MLP 50% + hidden size 25%, {args.dtype}, trace input 1x{args.trace_length}, "
          f"{args.repeats} alternated runs per tool; {load_average()}\n")
    runs: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):  # one process per run, the tools alternated (never two at once)
        for tool in args.tools.split(","):
            command = [sys.executable, __file__, "llama-worker", "--tool", tool, "--dtype", args.dtype,
                       "--trace-length", str(args.trace_length)] + (["--profile"] if args.profile else [])
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{tool} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
                continue
            runs.setdefault(tool, []).append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  repeat {repeat + 1} {tool}: {runs[tool][-1]['seconds']:.1f} s, {load_average()}", flush=True)
    print(f"\n| tool | model size GiB | RSS after build GiB | peak making masks GiB | peak pruning GiB | "
          f"peak / model size | masks s | prune/speedup s | total s (median of {args.repeats}) | params before | "
          "params after | hidden, FFN after | runs |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for tool, reports in runs.items():
        r = reports[-1]
        size = r["model_bytes"] / gib
        peak_kb = max(max(x["peak_prune_kb"], x.get("peak_masks_kb", 0)) for x in reports)
        masks_peak = f"{max(x['peak_masks_kb'] for x in reports) / 2 ** 20:.2f}" if "peak_masks_kb" in r else "-"

        def med(key):
            return statistics.median(x[key] for x in reports)
        print(f"| {tool} | {size:.2f} | {r['rss_built_kb'] / 2 ** 20:.2f} | {masks_peak} | "
              f"{max(x['peak_prune_kb'] for x in reports) / 2 ** 20:.2f} | {peak_kb * 1024 / gib / size:.2f} | "
              f"{med('masks_s'):.1f} | {med('prune_s'):.1f} | {med('seconds'):.1f} | {r['params_before']:,} | "
              f"{r['params_after']:,} | {r['shapes']['hidden']}, {r['shapes']['ffn']} | {r['runs']} |")
    if {"nncore", "torch-pruning"} <= runs.keys():
        ratios = [a["seconds"] / b["seconds"] for a, b in zip(runs["nncore"], runs["torch-pruning"])]
        print(f"\nnncore time / torch-pruning time per repeat: {', '.join(f'{x:.2f}' for x in ratios)}")
    for r in runs.get("nncore", [])[-1:]:
        print(f"\nnncore masks from: {r['sources']}; mask bytes {r['mask_bytes'] / gib:.2f} GiB")
        if r.get("stages"):
            print_stages(r["stages"])
    print(f"\n{load_average()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["bert", "llama", "llama-worker"])
    parser.add_argument("--repeats", type=int, default=3, help="alternated runs per tool")
    parser.add_argument("--runs", type=int, default=10, help="latency runs per model and repeat")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the BERT part")
    parser.add_argument("--trace-length", type=int, default=128,
                        help="sequence length of the example input both tools trace")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--tools", default="nncore,torch-pruning")
    parser.add_argument("--tool", default="nncore")
    parser.add_argument("--profile", action="store_true", help="seconds and RSS of each nncore speedup step")
    args = parser.parse_args()
    if args.part == "bert":
        run_bert(args)
    elif args.part == "llama":
        run_llama(args)
    else:
        report = llama_worker(args.tool, getattr(torch, args.dtype), args.trace_length, args.profile)
        print(json.dumps(report))


if __name__ == "__main__":
    main()
