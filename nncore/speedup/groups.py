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


def _without_pin(slots: np.ndarray, flags: np.ndarray | bool) -> tuple[np.ndarray, np.ndarray] | None:
    """``(slots, one flag per slot)`` without the PIN slot (``None`` when nothing is left)."""
    slots = np.asarray(slots, dtype=np.int64).ravel()
    flags = np.broadcast_to(np.asarray(flags, dtype=bool), slots.shape).ravel()
    real = slots != PIN
    return (slots[real], flags[real]) if real.any() else None


class ChannelClasses:
    """Union-find over slots, plus the facts that decide whether a class may be removed."""

    def __init__(self) -> None:
        self._parent = np.zeros(1024, dtype=np.int64)  # slot -> parent slot; slot 0 is PIN
        self._size = 1
        self.pins: list[tuple[np.ndarray, np.ndarray, str, bool]] = []  # (slots, zero, reason, soft)
        self._reads: list[tuple[np.ndarray, np.ndarray]] = []
        self.requests: list[tuple[np.ndarray, np.ndarray, str]] = []  # (slots, remove, owner norm)
        self.constraints: list[GroupConstraint] = []
        self.gqa: list[GQAConstraint] = []
        self.constants: list[tuple[int, str]] = []

    def new(self, count: int) -> np.ndarray:
        """``count`` fresh, independent slots."""
        start = self._size
        if start + count > len(self._parent):
            grown = np.zeros(max(2 * len(self._parent), start + count), dtype=np.int64)
            grown[:start] = self._parent[:start]
            self._parent = grown
        self._parent[start:start + count] = np.arange(start, start + count)
        self._size = start + count
        return np.arange(start, start + count, dtype=np.int64)

    def find_many(self, slots: np.ndarray) -> np.ndarray:
        """The class representative of every slot (with path compression)."""
        parent = self._parent
        roots = parent[slots]
        while True:
            up = parent[roots]
            if np.array_equal(up, roots):
                break
            roots = up
        parent[slots] = roots
        return roots

    def roots(self) -> np.ndarray:
        """The representative of every slot, indexed by slot."""
        return self.find_many(np.arange(self._size, dtype=np.int64))

    def union_vectors(self, a: np.ndarray, b: np.ndarray) -> None:
        """Merge ``a[i]`` with ``b[i]`` for every ``i`` (the same channel of two aligned tensors).

        Vectorized: each round links every pair's larger root to its smaller one (PIN, 0, is the
        smallest, so a pinned class stays pinned); a root that several pairs link in one round
        keeps one of the links, and the next round merges the others."""
        if a is b:
            return
        a, b = np.asarray(a, dtype=np.int64).ravel(), np.asarray(b, dtype=np.int64).ravel()
        differ = a != b
        a, b = a[differ], b[differ]
        while len(a):
            ra, rb = self.find_many(a), self.find_many(b)
            apart = ra != rb
            a, b, ra, rb = a[apart], b[apart], ra[apart], rb[apart]
            self._parent[np.maximum(ra, rb)] = np.minimum(ra, rb)

    def pin(self, slots: np.ndarray, reason: str, zero: np.ndarray | None = None, soft: bool = False) -> None:
        """Mark these slots as unremovable, remembering why (``reason`` names the op).

        ``zero[i]`` says slot ``i`` holds an exact zero there: pruned channels being blocked.
        A ``soft`` pin (a normalization over the channels, the model output) yields to a request
        to remove hidden channels (:meth:`request`).
        """
        chunk = _without_pin(slots, False if zero is None else zero)
        if chunk is not None:
            self.pins.append((*chunk, reason, soft))

    def request(self, slots: np.ndarray, remove: np.ndarray, owner: str) -> None:
        """A norm over these channels says, by its mask, which of them leave the residual stream.

        Every norm on one stream must say the same (see :func:`decide`)."""
        chunk = _without_pin(slots, remove)
        if chunk is not None:
            self.requests.append((*chunk, owner))

    def constrain_gqa(self, constraint: GQAConstraint) -> None:
        self.gqa.append(constraint)

    def read(self, slots: np.ndarray, ok: np.ndarray) -> None:
        """A channel-mixing consumer reads ``slots``; ``ok[i]`` says it reads a zero (or ignores it)."""
        chunk = _without_pin(slots, ok)
        if chunk is not None:
            self._reads.append(chunk)

    def read_roots(self, roots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The classes read anywhere, those read as a non-zero somewhere, and those read as a zero
        somewhere (``roots``: slot -> class)."""
        if not self._reads:
            return (np.zeros(0, np.int64),) * 3
        read, ok, _ = _chunks(self._reads, roots)
        return np.unique(read), np.unique(read[~ok]), np.unique(read[ok])

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
    roots = classes.roots()
    read, read_bad, read_ok = classes.read_roots(roots)
    any_ok = set(read_ok.tolist())
    wanted = set(np.setdiff1d(read, read_bad).tolist()) - {PIN}  # every read of the class is a zero
    pinned_zero, pin_reasons, hard_reasons = _pin_reasons(classes.pins, roots, read_bad)
    wanted |= pinned_zero
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


def _chunks(chunks: list[tuple], roots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate ``(slots, flags, ...)`` chunks: the classes of the slots, the flags, and the
    chunk each element came from."""
    slots = np.concatenate([chunk[0] for chunk in chunks])
    flags = np.concatenate([chunk[1] for chunk in chunks])
    which = np.repeat(np.arange(len(chunks)), [len(chunk[0]) for chunk in chunks])
    return roots[slots], flags, which


def _first_of(classes_: np.ndarray, which: np.ndarray, labels: list[str]) -> dict[int, str]:
    """For every class, the label of the first chunk that names it."""
    found, first = np.unique(classes_, return_index=True)
    return {int(root): labels[int(which[i])] for root, i in zip(found, first)}


def _pin_reasons(pins: list[tuple], roots: np.ndarray, read_bad: np.ndarray) -> tuple[set, dict, dict]:
    """From the pins, in the order they were made: the classes a zero pin makes removable (every
    read of the class is a zero), and per class the reason that keeps it (the first such zero pin,
    else the first pin) and the first hard (not soft) pin's reason."""
    if not pins:
        return set(), {}, {}
    pinned, zero, which = _chunks(pins, roots)
    reasons = [reason for _, _, reason, _ in pins]
    soft = np.array([is_soft for _, _, _, is_soft in pins], dtype=bool)
    candidates = zero & ~np.isin(pinned, read_bad)
    zero_reasons = _first_of(pinned[candidates], which[candidates], reasons)
    hard = ~soft[which]
    return set(zero_reasons), {**_first_of(pinned, which, reasons), **zero_reasons}, \
        _first_of(pinned[hard], which[hard], reasons)


def _requested(classes: ChannelClasses, roots: np.ndarray) -> set[int]:
    """Classes that the norms of their stream ask to remove; norms that disagree are an error."""
    if not classes.requests:
        return set()
    requested, remove, which = _chunks(classes.requests, roots)
    conflicts = np.intersect1d(requested[remove], requested[~remove])
    if len(conflicts):
        first = int(requested[np.isin(requested, conflicts)][0])
        owners = [owner for _, _, owner in classes.requests]
        here = requested == first
        pruning = sorted({owners[i] for i in which[here & remove]})
        keeping = sorted({owners[i] for i in which[here & ~remove]})
        raise SpeedupError(
            "norms on one residual stream must carry the same mask (a zero in a norm's weight mask removes "
            f"that hidden channel from the whole stream): {pruning} prune a channel that {keeping} keep")
    return set(np.unique(requested[remove]).tolist()) - {PIN}


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
