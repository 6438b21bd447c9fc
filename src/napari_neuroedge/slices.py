"""Which slices of a stack to process: ``"0:20,25:30"``, a slice or a list of indices -> slice indices.

Shared by prediction (the CLI, the widget, blockwise jobs), training data and export, so it sits below all of
them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

SliceSpec = str | slice | Sequence[int] | None


def parse_slices(spec: SliceSpec, depth: int) -> Sequence[int]:
    """Slice indices to process: None/"" -> all; "a:b" (python slice syntax, negatives allowed), "i", several
    of these joined by commas ("0:20,25:30", in that order; a slice named twice is an error), a slice or a
    sequence of indices (kept in its order; negatives count from the end). A range whose bounds lie beyond the
    stack ("18:25" of 20 slices) is an error, not silently cut short."""
    if spec is None or spec == "":
        return range(depth)
    if isinstance(spec, str) and "," in spec:
        zs = [z for part in spec.split(",") for z in parse_slices(part.strip(), depth)]
        twice = sorted(z for z, n in Counter(zs).items() if n > 1)
        if twice:
            raise ValueError(f"slices {spec!r} name slice(s) {twice} more than once")
        return zs
    if isinstance(spec, slice):
        return range(depth)[spec]
    if not isinstance(spec, str):
        zs = [int(z) for z in spec]
        bad = [z for z in zs if not -depth <= z < depth]
        if bad or not zs:
            raise ValueError(f"slices {list(spec)} do not lie in a stack of {depth} slices" if bad else
                             "no slices selected")
        return [z % depth for z in zs]
    parts = str(spec).split(":")
    try:
        if len(parts) == 1:
            i = int(parts[0])
            r = range(depth)[i:i + 1] if i >= 0 else range(depth)[i:][:1]
        else:
            vals = [int(p) if p.strip() else None for p in parts]
            r = range(depth)[slice(*vals)]
    except ValueError:
        raise ValueError(f"cannot parse slices {spec!r}; expected like 3 or 0:10 or 5:") from None
    if len(r) == 0:
        raise ValueError(f"slices {spec!r} select nothing from a stack of {depth} slices")
    if len(parts) > 1 and any(v is not None and not -depth <= v <= depth for v in vals[:2]):
        raise ValueError(f"slices {spec!r} reach past a stack of {depth} slices (0:{depth} is all of them)")
    return r
