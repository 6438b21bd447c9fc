"""What Export and Fine-tune will train on, read from the viewer (or a training-set folder) before they start.

:func:`slice_arrays` gives the label, ignore mask and the prediction the user corrected of one slice (what Export
writes and Fine-tune trains on); :func:`viewer_summary` / :func:`folder_summary` describe the data with the core's
:func:`~napari_neuroedge.training.finetune.describe_data` rules: the slices, their labelled and membrane fractions,
how much the user changed, the slices left out and why, and the warnings that need a confirmation (almost no
membrane, almost nothing labelled). No Qt here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import tracking

MAX_LINES = 12  # slices listed one per line; the rest are counted


@dataclass
class SliceArrays:
    """One slice of a membrane layer as training data: ``label`` uint8 (1 = membrane), ``mask`` uint8 (1 =
    labelled; None = all), ``prediction`` uint8 (the prediction the user corrected; None = never predicted)."""

    label: np.ndarray
    mask: np.ndarray | None
    prediction: np.ndarray | None

    @property
    def corrected(self) -> np.ndarray | None:
        """uint8: 1 where the label differs from the prediction the user corrected (None without one)."""
        return None if self.prediction is None else (self.prediction != self.label).astype(np.uint8)


def slice_arrays(viewer: Any, membranes: Any, z: int) -> SliceArrays:
    """Label, ignore mask (where ``<image> ignore`` has paint on slice ``z``) and reference prediction of ``z``."""
    label = (tracking.slice_of(membranes.data, z) > 0).astype(np.uint8)
    image = tracking.image_of(viewer, membranes)
    ignore = tracking.companion(viewer, image.name, "ignore") if image is not None else None
    mask = None
    if ignore is not None and tuple(ignore.data.shape) == tuple(membranes.data.shape):
        ign = tracking.slice_of(ignore.data, z)
        if ign.any():
            mask = (ign == 0).astype(np.uint8)
    return SliceArrays(label, mask, tracking.reference_prediction(viewer, membranes, z))


def viewer_training_slices(viewer: Any, membranes: Any, arrays: dict[int, Any] | None = None) -> list[dict[str, Any]]:
    """Raw (not yet normalised) corrected slices of a membrane layer: image, label, mask, corrected, meta.

    ``arrays``: {slice: :class:`SliceArrays`} already read (else read here)."""
    image = tracking.image_of(viewer, membranes)
    if image is None:
        raise ValueError(f"cannot find the image layer of '{membranes.name}'")
    out = []
    for z in tracking.ledger_of(membranes).training_slices():
        a = arrays[z] if arrays and z in arrays else slice_arrays(viewer, membranes, z)
        out.append({"image": np.array(tracking.slice_of(tracking.image_array(image), z)), "label": a.label,
                    "mask": a.mask, "corrected": a.corrected, "meta": {"source": image.name, "slice": int(z)}})
    return out


@dataclass
class Summary:
    """What a job will train on: ``slices`` (ids), ``rows`` (one :func:`describe_slice` dict each, with
    ``slice``), ``warnings`` (need a confirmation), ``notes`` (said, not asked), ``text`` (for the widget)."""

    slices: list[Any] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    text: str = ""
    pending: list[Any] = field(default_factory=list)  # slices whose rows are still being computed elsewhere

    @property
    def key(self) -> tuple[Any, ...]:
        """Identifies the data described (a confirmation given for one key does not carry to another)."""
        return tuple((r["slice"], r["pixels"], r["membrane_fraction"], r["changed_fraction"]) for r in self.rows)


def _line(row: dict[str, Any], scratch: bool) -> str:
    changed = ("labels drawn from scratch (never predicted)" if scratch or row["changed_fraction"] is None
               else f"{row['changed_fraction']:.1%} changed by you")
    return (f"  slice {row['slice']}: {row['labelled_fraction']:.0%} labelled, {row['membrane_fraction']:.1%} "
            f"membrane, {changed}")


def _compose(what: str, rows: list[dict[str, Any]], scratch: set[Any], warnings: list[str],
             notes: list[str]) -> str:
    lines = [what]
    lines += [_line(r, r["slice"] in scratch) for r in rows[:MAX_LINES]]
    if len(rows) > MAX_LINES:
        lines.append(f"  ... and {len(rows) - MAX_LINES} more slice(s)")
    lines += notes
    lines += [f"Warning: {w}" + ("" if w.endswith(("?", ".", "!")) else ".") for w in warnings]
    return "\n".join(lines)


#: slices with more pixels than this get their summary row in a background thread (:func:`viewer_summary`'s
#: ``later``): reading and counting a 4096^2 slice took 0.8 s of the GUI thread after each stroke
ROW_LATER_PIXELS = 2048 * 2048


def _ignore_key(viewer: Any, membranes: Any) -> Any:
    image = tracking.image_of(viewer, membranes)
    ignore = tracking.companion(viewer, image.name, "ignore") if image is not None else None
    return None if ignore is None else (id(ignore), tuple(ignore.data.shape))  # an ignore layer added or replaced


def cached_row(viewer: Any, membranes: Any, z: int) -> dict[str, Any] | None:
    """The cached :func:`slice_row` of slice ``z`` if it is still valid, else None."""
    hit = tracking.cached_rows(membranes).get(z)
    return hit[1] if hit is not None and hit[0] == _ignore_key(viewer, membranes) else None


def compute_row(viewer: Any, membranes: Any, z: int, arrays: Any = None) -> tuple[Any, dict[str, Any]]:
    """(cache key, row) of slice ``z``, read from the layers (no cache; safe in another thread: it only reads)."""
    from ..training.finetune import describe_row

    key = _ignore_key(viewer, membranes)
    a = arrays if arrays is not None else slice_arrays(viewer, membranes, z)
    return key, describe_row(z, a.label, a.mask, None if a.prediction is None else a.prediction != a.label)


def store_row(membranes: Any, z: int, keyed_row: tuple[Any, dict[str, Any]], version: int | None = None) -> bool:
    """Cache a :func:`compute_row` result; with ``version`` (:func:`.tracking.rows_version` when it was started)
    only if no row was dropped since (else the row may predate a stroke). Returns whether it was stored."""
    if version is not None and version != tracking.rows_version(membranes):
        return False
    tracking.cached_rows(membranes)[z] = keyed_row
    return True


def slice_row(viewer: Any, membranes: Any, z: int, arrays: Any = None) -> dict[str, Any]:
    """The :func:`~napari_neuroedge.training.finetune.describe_row` of slice ``z``, cached per slice in
    :func:`.tracking.cached_rows` (shared by Export and Fine-tune): a stroke re-reads only the slice it painted.

    ``arrays``: the slice's label, mask and prediction already read (the row is then computed from them)."""
    if arrays is None:
        hit = cached_row(viewer, membranes, z)
        if hit is not None:
            return hit
    keyed = compute_row(viewer, membranes, z, arrays)
    store_row(membranes, z, keyed)
    return keyed[1]


def _is_large_slice(membranes: Any) -> bool:
    return int(np.prod(membranes.data.shape[-2:], dtype=np.int64)) > ROW_LATER_PIXELS


def viewer_summary(viewer: Any, membranes: Any, arrays: dict[int, Any] | None = None,
                   later: Callable[[list[int]], None] | None = None) -> Summary:
    """The corrected slices of a membrane layer as Export / Fine-tune will take them, and what is left out
    (``text`` continues a sentence such as "Will export ").

    ``arrays``: {slice: object with label, mask, prediction} already read (else cached rows, see
    :func:`slice_row`). ``later``: for a layer of large slices (over :data:`ROW_LATER_PIXELS` px), rows not cached
    are not computed here: ``later(slices)`` is called to compute them elsewhere (the widgets: a thread), and the
    summary lists them in ``pending`` and says they are being counted.
    """
    from ..training.finetune import rows_warnings

    led = tracking.ledger_of(membranes)
    out = Summary(slices=led.training_slices())
    if later is not None and not arrays and _is_large_slice(membranes):
        out.pending = [z for z in out.slices if cached_row(viewer, membranes, z) is None]
    out.rows = [slice_row(viewer, membranes, z, (arrays or {}).get(z)) for z in out.slices if z not in out.pending]
    if out.pending:
        later(list(out.pending))
        out.notes.append(f"Counting the labelled pixels of slice {', '.join(map(str, out.pending))} ...")
    out.warnings = rows_warnings(out.rows)
    left_out = led.left_out()
    if left_out:
        out.notes.append(f"Not included: slice {', '.join(map(str, left_out))}, painted but never predicted (mark "
                         "it corrected in Correct if its labels are ground truth everywhere).")
    pixels = sum(r["pixels"] for r in out.rows)
    what = (f"{len(out.slices)} corrected slice(s), {pixels:,} labelled pixels:" if out.slices
            else "nothing: no slice is marked corrected.")
    if out.pending:
        what = (f"{len(out.slices)} corrected slice(s), {pixels:,} labelled pixels in the {len(out.rows)} counted "
                "so far:")
    out.text = _compose(what, out.rows, led.scratch, out.warnings, out.notes)
    return out


def folder_summary(folder: str | Path) -> Summary:
    """The items of a training-set folder (labels, masks and predictions read from disk)."""
    from ..training.finetune import describe_row, rows_warnings
    from ..io.trainingset import read_item, read_manifest

    folder = Path(folder)
    items = read_manifest(folder)["items"]
    out = Summary(slices=[it.get("name", it.get("slice")) for it in items])
    for entry, name in zip(items, out.slices):
        item = read_item(folder, entry, image=False)
        out.rows.append(describe_row(name, item.label, item.mask, item.corrected()))
    out.warnings = rows_warnings(out.rows)
    pixels = sum(r["pixels"] for r in out.rows)
    out.text = _compose(f"{len(items)} exported slice(s) in {folder.name}, {pixels:,} labelled pixels:", out.rows,
                        set(), out.warnings, out.notes)
    return out
