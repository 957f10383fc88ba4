"""What a speedup did, in words a user can act on."""
from __future__ import annotations

import attrs


@attrs.frozen
class SpeedupSummary:
    """The result of :meth:`ModelSpeedup.speedup_model`.

    ``shrunk`` maps each sliced module (or attribute) to ``(shape before, shape after)``;
    ``kept_by`` maps a reason (usually the op that blocked pruning) to the number of channel
    groups it kept although the masks pruned them; ``notes`` are plain remarks. ``folded`` maps
    each layer that absorbed removed constant channels into its bias to their number;
    ``masked_filters`` counts the whole filters the masks prune, ``kept_filters`` those still there.
    """

    shrunk: dict = attrs.field(factory=dict)
    kept_by: dict = attrs.field(factory=dict)
    notes: tuple = ()
    rewritten: tuple = ()
    opaque_modules: tuple = ()
    max_abs_diff: float | None = None  # measured with ``verify=True``
    folded: dict = attrs.field(factory=dict)
    masked_filters: int = 0
    kept_filters: int = 0

    def __str__(self) -> str:
        lines = [f"speedup: {len(self.shrunk)} module(s)/attribute(s) shrunk"]
        for name, (before, after) in self.shrunk.items():
            lines.append(f"  {name}: {before} -> {after}")
        for name, count in self.folded.items():
            lines.append(f"  {name}: {count} removed constant channel(s) folded into the bias")
        for reason, count in self.kept_by.items():
            lines.append(f"  kept {count} pruned channel group(s): {reason}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.max_abs_diff is not None:
            lines.append(f"  max |output difference| vs masked model: {self.max_abs_diff:.3g}")
        return "\n".join(lines)
