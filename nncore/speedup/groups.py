"""Channel classes: which channels must be removed together, and which of them may go.

Every index of every channel-like tensor dimension is a *slot*. Slots that must disappear
together (the two operands of a residual add, a conv output and the BatchNorm after it, the
same head in query, key and value) are merged into one *class* with a union-find. A class is
removed only when nobody can tell: every consumer that mixes channels (convolution, linear,
matrix product) reads an exact zero there, ignores it (zero weight column) or folds its constant
into its bias (see fold.py), no op the engine
does not understand touches it, and it does not reach the model output. Conflicting masks in a
coupled group are resolved by keeping the channel unless every member agrees it is pruned.
"""
from __future__ import annotations

from collections import defaultdict

import attrs
import numpy as np

from nncore.errors import SpeedupError

PIN = 0
"""The class of slots that can never be removed (model inputs, batch and spatial dimensions)."""


@attrs.frozen
class GQAConstraint:
    """Grouped-query attention: query head ``h`` reads key/value head ``h // (len(q) // len(kv))``.

    Removed query heads must leave the same number in every group; a key/value head goes when
    every query head of its group goes."""

    name: str
    q_slots: np.ndarray = attrs.field(eq=False)
    kv_slots: np.ndarray = attrs.field(eq=False)


@attrs.frozen
class GroupConstraint:
    """A grouped convolution: per group, as many inputs and outputs must go as in every other group."""

    name: str
    groups: int
    in_slots: np.ndarray = attrs.field(eq=False)
    out_slots: np.ndarray = attrs.field(eq=False)


class ChannelClasses:
    """Union-find over slots, plus the facts that decide whether a class may be removed."""

    def __init__(self) -> None:
        self.parent: list[int] = [PIN]
        self.pins: list[tuple[int, str, bool, bool]] = []
        self.reads: list[tuple[int, bool]] = []
        self.requests: list[tuple[int, bool, str]] = []
        self.constraints: list[GroupConstraint] = []
        self.gqa: list[GQAConstraint] = []
        self.constants: list[tuple[int, str]] = []

    def new(self, count: int) -> np.ndarray:
        """``count`` fresh, independent slots."""
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return np.arange(start, start + count, dtype=np.int64)

    def find(self, slot: int) -> int:
        parent = self.parent
        root = slot
        while parent[root] != root:
            root = parent[root]
        while parent[slot] != root:
            parent[slot], slot = root, parent[slot]
        return root

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(int(a)), self.find(int(b))
        if ra == rb:
            return ra
        if rb == PIN or (ra != PIN and rb < ra):
            ra, rb = rb, ra
        self.parent[rb] = ra
        return ra

    def union_vectors(self, a: np.ndarray, b: np.ndarray) -> None:
        """Merge ``a[i]`` with ``b[i]`` for every ``i`` (the same channel of two aligned tensors)."""
        if a is b:
            return
        differ = np.nonzero(a != b)[0]
        for i in differ:
            self.union(a[i], b[i])

    def union_all(self, slots: np.ndarray) -> int:
        """Merge every slot of ``slots`` into one class; returns its representative."""
        flat = np.unique(slots)
        first = int(flat[0])
        for other in flat[1:]:
            self.union(first, other)
        return self.find(first)

    def pin(self, slots: np.ndarray, reason: str, zero: np.ndarray | None = None, soft: bool = False) -> None:
        """Mark these slots as unremovable, remembering why (``reason`` names the op).

        ``zero[i]`` says slot ``i`` holds an exact zero there: pruned channels being blocked.
        A ``soft`` pin (a normalization over the channels, the model output) yields to a request
        to remove hidden channels (:meth:`request`).
        """
        zero = np.zeros(len(slots), dtype=bool) if zero is None else np.asarray(zero, dtype=bool)
        for slot, is_zero in zip(slots.tolist(), zero.tolist()):
            if slot != PIN:
                self.pins.append((slot, reason, is_zero, soft))

    def request(self, slots: np.ndarray, remove: np.ndarray, owner: str) -> None:
        """A norm over these channels says, by its mask, which of them leave the residual stream.

        Every norm on one stream must say the same (see :func:`decide`)."""
        for slot, flag in zip(slots.tolist(), np.asarray(remove, dtype=bool).tolist()):
            if slot != PIN:
                self.requests.append((slot, flag, owner))

    def constrain_gqa(self, constraint: GQAConstraint) -> None:
        self.gqa.append(constraint)

    def read(self, slots: np.ndarray, ok: np.ndarray) -> None:
        """A channel-mixing consumer reads ``slots``; ``ok[i]`` says it reads a zero (or ignores it)."""
        for slot, good in zip(slots.tolist(), np.asarray(ok, dtype=bool).tolist()):
            if slot != PIN:
                self.reads.append((slot, good))

    def keep_constant(self, slots: np.ndarray, reason: str) -> None:
        """A consumer reads these slots as non-zero constants it cannot fold into its bias (the read
        itself is recorded with :meth:`read`); ``reason`` is reported if that keeps their class."""
        for slot in slots.tolist():
            if slot != PIN:
                self.constants.append((slot, reason))

    def constrain_groups(self, constraint: GroupConstraint) -> None:
        self.constraints.append(constraint)


@attrs.frozen
class Decision:
    """The outcome: removed class roots, and why the classes that masks pruned were kept."""

    removed: frozenset
    kept_by: dict = attrs.field(eq=False)  # reason -> number of classes it blocked
    roots: np.ndarray = attrs.field(eq=False)  # slot -> class root
    removed_slots: np.ndarray = attrs.field(eq=False)  # slot -> removed?

    def removed_mask(self, slots: np.ndarray) -> np.ndarray:
        """Boolean vector: which of these slots are removed."""
        return self.removed_slots[slots]


def decide(classes: ChannelClasses) -> Decision:
    """Pick the classes to remove (see the module docstring) and resolve grouped convolutions.

    :raises SpeedupError: norms on one residual stream carry different masks.
    """
    roots = np.array([classes.find(i) for i in range(len(classes.parent))], dtype=np.int64)
    all_ok: dict[int, bool] = {}
    any_ok: set[int] = set()
    for slot, good in classes.reads:
        root = int(roots[slot])
        all_ok[root] = all_ok.get(root, True) and good
        if good:
            any_ok.add(root)
    wanted = {root for root, good in all_ok.items() if good and root != PIN}
    pin_reasons: dict[int, str] = {}
    hard_reasons: dict[int, str] = {}
    for slot, reason, is_zero, soft in classes.pins:
        root = int(roots[slot])
        if is_zero and root not in pin_reasons and all_ok.get(root, True):
            wanted.add(root)
            pin_reasons[root] = reason
        if not soft:
            hard_reasons.setdefault(root, reason)
    for slot, reason, _, _ in classes.pins:
        pin_reasons.setdefault(int(roots[slot]), reason)
    removed = {root for root in wanted if root not in pin_reasons}
    kept_by: dict[str, int] = defaultdict(int)
    for root in wanted:
        if root in pin_reasons:
            kept_by[pin_reasons[root]] += 1
    constant_reasons: dict[int, str] = {}
    for slot, reason in classes.constants:
        root = int(roots[slot])
        if root not in wanted and root not in constant_reasons:
            constant_reasons[root] = reason
            kept_by[reason] += 1
    conflicts = len([root for root in any_ok if root not in wanted and root != PIN and root not in constant_reasons])
    if conflicts:
        kept_by["coupled channels are not zero everywhere they are read (conflicting masks in the group, "
                "or an unmasked bias or normalization in between)"] += conflicts
    for root in _requested(classes, roots):
        if root in hard_reasons:
            kept_by[hard_reasons[root]] += 1
        else:
            removed.add(root)
    removed = _resolve_groups(classes.constraints, roots, removed, kept_by)
    removed = _resolve_gqa(classes.gqa, roots, removed, kept_by)
    flags = np.zeros(len(roots), dtype=bool)
    if removed:
        flags[np.fromiter(removed, dtype=np.int64)] = True
    return Decision(removed=frozenset(removed), kept_by=dict(kept_by), roots=roots, removed_slots=flags[roots])


def _requested(classes: ChannelClasses, roots: np.ndarray) -> set[int]:
    """Classes that the norms of their stream ask to remove; norms that disagree are an error."""
    votes: dict[int, dict[bool, set[str]]] = {}
    for slot, flag, owner in classes.requests:
        votes.setdefault(int(roots[slot]), {True: set(), False: set()})[flag].add(owner)
    for root, by_flag in votes.items():
        if by_flag[True] and by_flag[False]:
            raise SpeedupError(
                "norms on one residual stream must carry the same mask (a zero in a norm's weight mask removes "
                f"that hidden channel from the whole stream): {sorted(by_flag[True])} prune a channel that "
                f"{sorted(by_flag[False])} keep")
    return {root for root, by_flag in votes.items() if by_flag[True] and root != PIN}


def _resolve_gqa(constraints: list[GQAConstraint], roots: np.ndarray, removed: set, kept_by) -> set:
    """Grouped-query attention: whole key/value groups go, and the other groups keep the same
    number of query heads each."""
    for constraint in constraints:
        kv_roots = roots[constraint.kv_slots]
        q_roots = roots[constraint.q_slots].reshape(len(kv_roots), -1)
        gone = np.isin(q_roots, list(removed)) if removed else np.zeros(q_roots.shape, bool)
        full = gone.all(axis=1)
        if full.all():  # an attention keeps one group
            full[0] = False
            gone[0] = False
            for root in q_roots[0]:
                removed.discard(int(root))
            kept_by[f"attention {constraint.name!r} keeps at least one head"] += 1
        partial = ~full
        keep_count = int(gone[partial].sum(axis=1).min()) if partial.any() else 0
        for g in np.nonzero(partial)[0]:
            for index in np.nonzero(gone[g])[0][keep_count:]:
                removed.discard(int(q_roots[g, index]))
                kept_by[f"grouped-query attention {constraint.name!r} keeps the same number of query heads "
                        f"per key/value head"] += 1
        for g, root in enumerate(kv_roots.tolist()):
            if full[g]:
                removed.add(int(root))
            else:
                removed.discard(int(root))
    return removed


def _resolve_groups(constraints, roots, removed: set, kept_by) -> set:
    """Grouped convolutions keep the same number of inputs and outputs per group (fixpoint)."""
    changed = True
    while changed and constraints:
        changed = False
        for constraint in constraints:
            for slots in (constraint.in_slots, constraint.out_slots):
                per_group = roots[slots].reshape(constraint.groups, -1)
                gone = np.isin(per_group, list(removed)) if removed else np.zeros(per_group.shape, bool)
                counts = gone.sum(axis=1)
                if counts.min() == counts.max():
                    continue
                keep_count = counts.min()
                for g in range(constraint.groups):
                    extra = np.nonzero(gone[g])[0][keep_count:]
                    for index in extra:
                        root = int(per_group[g, index])
                        if root in removed:
                            removed.discard(root)
                            kept_by[f"grouped convolution {constraint.name!r} needs equal groups"] += 1
                            changed = True
    return removed
