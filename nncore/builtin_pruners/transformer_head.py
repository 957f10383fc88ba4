"""TransformerHeadPruner: prunes whole attention heads of transformers (NNI 2.10's semantics).

An attention group is four projections ``[q, k, v, o]`` (see :mod:`nncore.builtin_pruners.head_layout`
for where a head's features are, fused projections included); pruning a head masks its features of
all four. With grouped-query attention (``k`` and ``v`` narrower than ``q``; query head ``h``
reads key/value head ``h // (num_heads // num_kv_heads)``) a key/value head is pruned only together
with every query head that reads it.

Which heads go is decided by :mod:`nncore.builtin_pruners.head_criteria`; the heads pruned in an
iteration stay pruned in the next.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from nncore.builtin_pruners.head_criteria import (
    ACTIVATION_CRITERIA,
    CRITERIA,
    HeadStatistics,
    head_units,
    select_global,
    select_local,
    weight_head_scores,
)
from nncore.builtin_pruners.head_layout import (
    AttentionWrapper,
    FeatureSlice,
    HeadLayout,
    groups_from_names,
    head_layout,
    head_rows,
)
from nncore.compressor import Pruner
from nncore.config import LayerConfig
from nncore.errors import ConfigError, NncoreError
from nncore.hookspecs import hookimpl
from nncore.speedup.attention import AttentionGroup
from nncore.wrapper import module_parameter

GQA_PRUNING = ("kv_groups", "query_heads")
OP_TYPES: tuple[str, ...] = ("Linear", "NonDynamicallyQuantizableLinear", "Conv1D", "MultiheadAttention")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}, got {value!r}", header="invalid argument")


class TransformerHeadPruner(Pruner):
    """Prunes the least important attention heads of each attention group (or of all, ``global_sort``).

    ``config_list`` keys: ``sparsity`` (the fraction of each selected group's heads to prune:
    ``int(heads * sparsity)`` heads, at least one kept), with ``op_types`` / ``op_names`` selecting
    projections; a group is pruned when all of its modules are selected (for an
    ``nn.MultiheadAttention``: the attention and its ``out_proj``), and they must share one sparsity.
    Selected modules outside any group are ignored.

    >>> groups = [[f"encoder.layer.{i}.attention.self.{p}" for p in ("query", "key", "value")]
    ...           + [f"encoder.layer.{i}.attention.output.dense"] for i in range(12)]
    >>> pruner = TransformerHeadPruner(bert, [{"sparsity": 0.5, "op_types": ["Linear"]}], head_hidden_dim=64,
    ...                                attention_name_groups=groups, ranking_criterion="l1_weight")
    >>> pruner.compress()

    :param model: the model to prune.
    :param config_list: see above.
    :param head_hidden_dim: features per head (64 for BERT-base), the same in every group; may be left
        out with ``dummy_input``, which finds it.
    :param attention_name_groups: ``[[q, k, v, o], ...]`` module names per attention layer; a fused
        projection is named three times (``[c_attn, c_attn, c_attn, c_proj]``; an
        ``nn.MultiheadAttention`` ``attn``: ``[attn, attn, attn, attn.out_proj]``).
    :param dummy_input: an input of the model (tensor, tuple of positional inputs or dict of keyword
        inputs), to find the groups with :func:`nncore.speedup.find_attention_groups` when
        ``attention_name_groups`` is not given (``nn.MultiheadAttention`` modules are taken as they are).
    :param ranking_criterion: ``'l1_weight'``, ``'l2_weight'``, ``'l1_activation'``, ``'l2_activation'``
        or ``'taylorfo'`` (see :mod:`nncore.builtin_pruners.head_criteria`).
    :param global_sort: rank the heads of all groups together (every group needs the same sparsity)
        instead of within each group.
    :param num_iterations: prune in this many steps, each to a larger share of the sparsity
        (``sparsity * i / num_iterations`` after step ``i``), fine-tuning in between.
    :param epochs_per_iteration: epochs of ``trainer`` between two steps.
    :param optimizer: passed to ``trainer``.
    :param trainer: ``trainer(model, optimizer=..., criterion=..., epoch=...)`` trains one epoch; needed
        with ``num_iterations > 1`` (``epoch`` = 1, 2, ...) and for ``'taylorfo'``, which observes the
        gradients of one call with ``epoch=None`` before each step.
    :param criterion: passed to ``trainer``.
    :param forward_runner: ``forward_runner(model)`` runs the data forward (no training); needed for
        the activation criteria, called in eval mode before each step.
    :param gqa_pruning: with grouped-query attention, ``'kv_groups'`` prunes whole key/value groups
        (a key/value head and every query head that reads it; importance summed over the group) and
        ``'query_heads'`` prunes only query heads, as many in every key/value group (``sparsity`` is then
        the fraction of each key/value group's query heads); keys and values stay.
    :param plugins: extra hook implementations (see :mod:`nncore.hookspecs`); this pruner computes the
        masks of a whole group at once and does not call ``calc_mask``.
    :param verbose: show a progress bar over the iterations.
    :raises ConfigError: a bad argument, group or ``config_list``; the model is untouched.

    :ivar attention_groups: the selected groups (:class:`~nncore.speedup.attention.AttentionGroup`).
    :ivar pruned_heads: ``{group index: set of pruned query heads}``.
    """

    name: ClassVar[str] = "transformer_head"
    job_arguments: ClassVar[Mapping[str, str]] = {"dummy_input": "dummy_input", "optimizer": "optimizer",
                                                  "trainer": "trainer", "criterion": "criterion", "verbose": "verbose"}
    config_schema: ClassVar[dict[str, Any]] = {
        "properties": {"sparsity": {"type": "number", "minimum": 0, "exclusiveMaximum": 1,
                                    "description": "Fraction of each attention group's heads to prune."}},
        "required": ["sparsity"],
    }
    default_op_types: ClassVar[tuple[str, ...]] = OP_TYPES

    def __init__(
        self,
        model: nn.Module,
        config_list: Sequence[dict[str, Any]],
        head_hidden_dim: int | None = None,
        attention_name_groups: Sequence[Sequence[str]] | None = None,
        dummy_input: Any = None,
        ranking_criterion: str = "l1_weight",
        global_sort: bool = False,
        num_iterations: int = 1,
        epochs_per_iteration: int = 1,
        optimizer: torch.optim.Optimizer | None = None,
        trainer: Callable[..., Any] | None = None,
        criterion: Callable[..., Any] | None = None,
        forward_runner: Callable[[nn.Module], Any] | None = None,
        *,
        gqa_pruning: str = "kv_groups",
        plugins: Iterable[Any] = (),
        verbose: bool = True,
    ):
        if head_hidden_dim is not None or attention_name_groups is not None:
            _check_int("head_hidden_dim", head_hidden_dim, 1)  # else: taken from the groups dummy_input finds
        _check_int("num_iterations", num_iterations, 1)
        _check_int("epochs_per_iteration", epochs_per_iteration, 0)
        self._check_arguments(ranking_criterion, gqa_pruning, num_iterations, optimizer, trainer, forward_runner)
        if attention_name_groups is None and dummy_input is None:
            raise ConfigError("TransformerHeadPruner needs attention_name_groups ([[q, k, v, o], ...] module names) "
                              "or dummy_input to find them", header="invalid argument")
        self.head_hidden_dim = head_hidden_dim
        self.ranking_criterion = ranking_criterion
        self.global_sort = bool(global_sort)
        self.num_iterations = num_iterations
        self.epochs_per_iteration = epochs_per_iteration
        self.trainer, self.criterion = trainer, criterion
        self.forward_runner = forward_runner
        self.gqa_pruning = gqa_pruning
        self.verbose = verbose
        self.dummy_input = dummy_input
        super().__init__(model, config_list, optimizer, plugins=plugins)
        if attention_name_groups is not None:
            groups = groups_from_names(model, attention_name_groups, head_hidden_dim)
        else:
            groups = self._found_groups(dummy_input)
        self.layouts, self.group_sparsity = self._select(model, [head_layout(model, group) for group in groups])
        self.attention_groups = [layout.group for layout in self.layouts]
        self.pruned_heads: dict[int, set[int]] = {index: set() for index in range(len(self.layouts))}

    @staticmethod
    def _check_arguments(ranking_criterion: Any, gqa_pruning: Any, num_iterations: int, optimizer: Any,
                         trainer: Any, forward_runner: Any) -> None:
        problems = []
        if ranking_criterion not in CRITERIA:
            problems.append(f"ranking_criterion must be one of {', '.join(map(repr, CRITERIA))}, got {ranking_criterion!r}")
        if gqa_pruning not in GQA_PRUNING:
            problems.append(f"gqa_pruning must be one of {', '.join(map(repr, GQA_PRUNING))}, got {gqa_pruning!r}")
        needs_training = [why for why, needed in (("ranking_criterion='taylorfo'", ranking_criterion == "taylorfo"),
                                                  (f"num_iterations={num_iterations}", num_iterations > 1)) if needed]
        if needs_training and not callable(trainer):
            problems.append(f"{' and '.join(needs_training)} needs trainer(model, optimizer, criterion, epoch), got {trainer!r}")
        if needs_training and optimizer is None:
            problems.append(f"{' and '.join(needs_training)} needs the optimizer that trainer uses")
        if ranking_criterion in ACTIVATION_CRITERIA and not callable(forward_runner):
            problems.append(f"ranking_criterion={ranking_criterion!r} needs forward_runner(model), got {forward_runner!r}")
        if problems:
            raise ConfigError(problems, header="invalid argument")

    def _found_groups(self, dummy_input: Any) -> list[AttentionGroup]:
        """The groups :func:`nncore.speedup.find_attention_groups` finds in one forward on ``dummy_input``,
        and every ``nn.MultiheadAttention`` (which it leaves out)."""
        from nncore.speedup import find_attention_groups

        model = self.bound_model
        try:
            found = find_attention_groups(model, dummy_input)
        except NncoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the user's model on dummy_input
            raise ConfigError(f"TransformerHeadPruner: dummy_input does not run through the model "
                              f"({type(exc).__name__}: {exc})", header="invalid argument") from exc
        covered = {group.q for group in found}
        found += [AttentionGroup(name=name, q=name, k=name, v=name, o=f"{name}.out_proj", num_heads=module.num_heads,
                                 num_kv_heads=module.num_heads, head_dim=module.head_dim, fused=True)
                  for name, module in model.named_modules()
                  if isinstance(module, nn.MultiheadAttention) and name not in covered]
        if not found:
            raise ConfigError("dummy_input: found no attention in the model; pass attention_name_groups",
                              header="invalid argument")
        if self.head_hidden_dim is None:
            self.head_hidden_dim = found[0].head_dim
        problems = [f"head_hidden_dim={self.head_hidden_dim} does not match attention {group.name!r} "
                    f"({group.num_heads} heads of {group.head_dim} features, found from dummy_input)"
                    for group in found if group.head_dim != self.head_hidden_dim]
        if problems:
            raise ConfigError(problems, header="invalid argument")
        groups_from_names(model, [[group.q, group.k, group.v, group.o] for group in found], self.head_hidden_dim)
        return found

    @classmethod
    def unsupported_reason(cls, module: nn.Module) -> str | None:
        if isinstance(module, nn.MultiheadAttention):
            return None
        return super().unsupported_reason(module)

    def _select(self, model: nn.Module, layouts: list[HeadLayout]) -> tuple[list[HeadLayout], list[float]]:
        """The layouts whose modules ``config_list`` selects, and their sparsities; the layer configs
        become the modules to wrap."""
        configs = {config.name: config for config in self.layer_configs}
        errors, selected, sparsities = [], [], set()
        for layout in layouts:
            chosen = [name for name in layout.members if name in configs]
            if not chosen:
                continue
            where = f"attention group {layout.group.name or '<model>'!r}"
            if len(chosen) < len(layout.members):
                missing = [name for name in layout.members if name not in configs]
                errors.append(f"config_list selects {', '.join(map(repr, chosen))} but not "
                              f"{', '.join(map(repr, missing))} of {where}; select all of its modules or none")
                continue
            values = {configs[name]["sparsity"] for name in chosen}
            if len(values) > 1:
                errors.append(f"config_list gives the modules of {where} different sparsities "
                              f"{sorted(values)}; a group is pruned at one sparsity")
                continue
            sparsities |= values
            selected.append(layout)
        if not errors and not selected:
            errors.append("config_list selects no complete attention group (groups: "
                          + "; ".join(str(list(layout.members)) for layout in layouts) + ")")
        if self.global_sort and len(sparsities) > 1:
            errors.append(f"global_sort=True ranks all groups together, so give them one sparsity, got {sorted(sparsities)}")
        if errors:
            raise ConfigError(errors, header=f"invalid config_list for {type(self).__name__}")
        order = {name: position for position, (name, _) in enumerate(model.named_modules())}
        wrapped = sorted({name for layout in selected for name in layout.wrapped}, key=order.__getitem__)
        self.layer_configs = tuple(configs[name] for name in wrapped)
        return selected, [configs[layout.members[0]]["sparsity"] for layout in selected]

    def make_wrapper(self, module: nn.Module, config: LayerConfig) -> nn.Module:
        if not isinstance(module, nn.MultiheadAttention):
            return super().make_wrapper(module, config)
        layout = next(layout for layout in self.layouts if config.name in layout.wrapped)
        parameters = [s.parameter for s in (*layout.q, *layout.k, *layout.v, layout.o)] + ["out_proj.bias"]
        return AttentionWrapper(module, config.name, config, mask_parameters=tuple(dict.fromkeys(parameters)))

    # -- pruning --------------------------------------------------------------------------------------

    def compress(self) -> nn.Module:
        """Wrap the projections and prune in ``num_iterations`` steps, fine-tuning in between.

        If anything fails (the user's trainer too), the original modules are put back before the
        error propagates.
        """
        self._wrap_model()
        try:
            from nncore.builtin_pruners.search_base import progress

            bar = progress(self.num_iterations, "TransformerHeadPruner (iterations)", self.verbose)
            for iteration in range(1, self.num_iterations + 1):
                self._prune_step(iteration / self.num_iterations)
                bar.update()
                bar.set_postfix(pruned_heads=sum(map(len, self.pruned_heads.values())))
                if iteration < self.num_iterations:
                    for epoch in range(1, self.epochs_per_iteration + 1):
                        self.trainer(self.bound_model, optimizer=self.optimizer, criterion=self.criterion, epoch=epoch)
            bar.close()
        except BaseException:
            self.unwrap_model()
            raise
        return self.bound_model

    def update_masks(self, sparsities: Mapping[str, float] | None = None) -> None:
        """Rank the heads again and prune up to the configured sparsity (pruned heads stay pruned)."""
        if sparsities is not None:
            raise NncoreError("TransformerHeadPruner prunes whole attention groups at their configured sparsity; "
                              "update_masks() takes no per-layer sparsities")
        self._prune_step(1.0)

    def _prune_step(self, share: float) -> None:
        """Prune each group to ``share`` of its sparsity, by the current importance of its heads."""
        scores = self.head_scores()
        units = [head_units(scores[index], layout.group.num_kv_heads, self.pruned_heads[index],
                            self.gqa_pruning == "query_heads") for index, layout in enumerate(self.layouts)]
        if self.global_sort:
            chosen = select_global(units, self.group_sparsity[0] * share)
        else:
            chosen = [select_local(group_units, sparsity * share) for group_units, sparsity in zip(units, self.group_sparsity)]
        for index, heads in enumerate(chosen):
            self.pruned_heads[index] |= heads
            self._set_group_masks(index)

    def head_scores(self) -> list[torch.Tensor]:
        """The importance of every query head of every group (higher keeps), by ``ranking_criterion``.

        The activation criteria call ``forward_runner`` (in eval mode), ``'taylorfo'`` calls ``trainer``
        once with ``epoch=None``.
        """
        if not self.wrappers:
            raise NncoreError(f"{type(self).__name__}: call compress() first")
        if self.ranking_criterion in ("l1_weight", "l2_weight"):
            return [self._weight_scores(layout) for layout in self.layouts]
        model = self.bound_model
        with HeadStatistics(self.ranking_criterion, [layout.observed for layout in self.layouts]) as statistics:
            if self.ranking_criterion == "taylorfo":
                self.trainer(model, optimizer=self.optimizer, criterion=self.criterion, epoch=None)
                source = "trainer"
            else:
                was_training = model.training
                model.eval()
                try:
                    self.forward_runner(model)
                finally:
                    model.train(was_training)
                source = "forward_runner"
        empty = [layout.group.o for layout, total in zip(self.layouts, statistics.sums) if total is None]
        if empty:
            raise ConfigError(f"{source} ran no batch through {', '.join(map(repr, empty))}"
                              + (" with gradients" if source == "trainer" else ""), header="invalid argument")
        return statistics.sums

    def _weight_scores(self, layout: HeadLayout) -> torch.Tensor:
        modules = {name: self.wrappers[name].module for name in layout.wrapped}

        def rows(where: FeatureSlice) -> torch.Tensor:
            return head_rows(module_parameter(modules[where.module], where.parameter), where, self.head_hidden_dim)

        group = layout.group
        return weight_head_scores(rows(layout.q[0]), rows(layout.k[0]), rows(layout.v[0]), group.num_heads,
                                  group.num_kv_heads, 1 if self.ranking_criterion == "l1_weight" else 2)

    def _set_group_masks(self, index: int) -> None:
        """Masks of group ``index`` from its pruned query heads (a key/value head goes with all its readers)."""
        layout, pruned = self.layouts[index], self.pruned_heads[index]
        group, size = layout.group, layout.group.group_size
        pruned_kv = {j for j in range(group.num_kv_heads) if all(h in pruned for h in range(j * size, (j + 1) * size))}
        masks: dict[tuple[str, str], torch.Tensor] = {}
        for slices, heads in ((layout.q, pruned), (layout.k, pruned_kv), (layout.v, pruned_kv), ((layout.o,), pruned)):
            for where in slices:
                key = (where.module, where.parameter)
                if key not in masks:
                    masks[key] = torch.ones_like(self.wrappers[where.module].parameter_masks()[where.parameter])
                for head in heads:
                    masks[key].narrow(where.axis, where.offset + head * group.head_dim, group.head_dim).zero_()
        for module in layout.wrapped:
            self.wrappers[module].set_parameter_masks({p: mask for (m, p), mask in masks.items() if m == module})


@hookimpl
def register_compressors() -> list[type]:
    return [TransformerHeadPruner]
