"""After heads are removed: the attention module's head-count attributes follow.

Hugging Face attention code sizes its views with ``-1`` heads, but some models read an attribute
in ``forward`` (GPT-2 splits its fused projection with ``self.split_size``, Llama repeats key/value
heads ``self.num_key_value_groups`` times). Attributes of the module that runs the attention are
updated by name, and only where they hold the old value; a shared config is never changed, since
layers may now differ in their head counts.
"""
from __future__ import annotations


from nncore.speedup.attention import split_view
from nncore.speedup.graph import module_path
from nncore.speedup.journal import Journal

HEADS = ("num_heads", "num_attention_heads", "n_head", "n_heads", "attention_heads")
KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "kv_heads")
GROUPS = ("num_key_value_groups", "n_rep", "num_queries_per_kv")
WIDTHS = ("all_head_size", "inner_dim", "split_size")


def head_counts(analysis) -> list[tuple[str, int, int, int, int, int]]:
    """Per attention computation: (module, heads, kept heads, kv heads, kept kv heads, head_dim)."""
    found = []
    ctx, decision, values = analysis.ctx, analysis.decision, analysis.capture.values
    for core in analysis.cores:
        q_info, k_view = ctx.infos.get(core.q), split_view(core.k, values)
        k_info = ctx.infos.get(k_view) if k_view is not None else ctx.infos.get(core.k)
        if q_info is None or k_info is None or q_info.ndim < 3:
            continue
        heads = q_info.slots[-3]
        kv = k_info.slots[-2] if k_view is not None else k_info.slots[-3]
        kept = int((~decision.removed_mask(heads)).sum())
        kept_kv = int((~decision.removed_mask(kv)).sum())
        found.append((module_path(core.node), len(heads), kept, len(kv), kept_kv, int(values[core.q].shape[-1])))
    return found


def update_head_attributes(analysis, journal: Journal) -> dict[str, dict[str, int]]:
    """Set the head-count attributes of every attention module that lost heads; returns
    ``{module name: {attribute: new value}}``."""
    changed: dict[str, dict[str, int]] = {}
    for owner, heads, kept, kv, kept_kv, head_dim in head_counts(analysis):
        if kept == heads and kept_kv == kv:
            continue
        module = analysis.capture.get_submodule(owner) if owner else analysis.capture.model
        updates = [(HEADS, heads, kept), (KV_HEADS, kv, kept_kv), (WIDTHS, heads * head_dim, kept * head_dim)]
        if kv and kept_kv:
            updates.append((GROUPS, heads // kv, kept // kept_kv))
        for names, old, new in updates:
            for name in names:
                value = module.__dict__.get(name)
                if isinstance(value, int) and not isinstance(value, bool) and value == old and old != new:
                    journal.touch(module)
                    setattr(module, name, new)
                    changed.setdefault(owner, {})[name] = new
    return changed
