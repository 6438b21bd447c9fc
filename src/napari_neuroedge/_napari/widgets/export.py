"""Export widget: the slices marked corrected -> a training-set folder (the format the trainer reads).

Each slice is written with :func:`napari_neuroedge.io.export.export_slices`: image, membrane label, an ignore mask
where ``<image> ignore`` was painted, the model's prediction before correction, and provenance (source file,
slice index, model and version, pixel size, time). Existing sets are added to under new names, never
overwritten; a slice whose labels did not change since its last export to the same folder is skipped.

Before exporting, the widget lists what it will write (:func:`..training_data.viewer_summary`: slices, labelled
and membrane fractions, pixels changed, slices left out); when a slice is flagged (almost no membrane, almost
nothing labelled) the first click only shows the warnings and a second click exports.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
from qtpy.QtWidgets import QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton, QWidget

from .. import tracking
from .._qt_utils import LayerCombo, notify, reason, report, short_name
from ..training_data import slice_arrays, viewer_summary
from .common import NeuroEdgeWidget, SecondClick, debounced
from ..rows_later import row_filler


def _digest(*arrays: np.ndarray | None) -> str:
    h = hashlib.sha1()
    for arr in arrays:
        h.update(b"-" if arr is None else np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def source_of(image: Any) -> str:
    """Where an image layer came from: the reader's source, napari's source path, or the layer name."""
    meta = image.metadata if isinstance(image.metadata, dict) else {}
    src = meta.get("source") or getattr(getattr(image, "source", None), "path", None)
    return str(src) if src else f"napari layer '{image.name}'"


UNKNOWN_UNIT = "unknown"


def pixel_size_of(image: Any) -> tuple[list[float], str]:
    """Pixel size (y, x) and its unit, read from the layer: its scale, in its units when napari knows them
    (the NeuroEdge reader sets nm from the file), else from a voxel size the reader stored; the unit is
    :data:`UNKNOWN_UNIT` when nothing states it (e.g. a TIFF opened with napari's own reader: scale 1 pixel)."""
    scale = [float(s) for s in list(image.scale)[-2:]]
    units = [str(u) for u in (getattr(image, "units", None) or ())][-2:]
    if units and all(u and u not in ("pixel", "px", "dimensionless") for u in units):
        unit = units[0] if len(set(units)) == 1 else "/".join(units)
        return scale, {"nanometer": "nm", "micrometer": "um"}.get(unit, unit)
    meta = image.metadata if isinstance(image.metadata, dict) else {}
    voxel = meta.get("voxel_size")
    if voxel and all(float(v) == float(v) and float(v) > 0 for v in list(voxel)[-2:]):
        return [float(v) for v in list(voxel)[-2:]], "nm"
    return scale, UNKNOWN_UNIT


def unknown_pixel_size(image: Any, size: Sequence[float]) -> str:
    """Why the pixel size of ``image`` is unknown and how to set it: a stack the NeuroEdge reader opened whose
    file states none, or one opened by another reader (scale without units)."""
    meta = image.metadata if isinstance(image.metadata, dict) else {}
    how = ("set the layer's scale in nm (napari's console: viewer.layers['{name}'].scale = (z, y, x) and "
           ".units = 'nm'), or write the pixel size into the file (OME-TIFF PhysicalSizeX/Y, or the TIFF "
           "resolution tags) and open it again").format(name=image.name)
    if "voxel_size" in meta:  # the NeuroEdge reader opened it: the file has no pixel size
        source = short_name(meta.get("source") or image.name, 40)
        return f"Pixel size unknown: the file {source} does not state one. To record it, {how}."
    return (f"Pixel size unknown: '{image.name}' has scale {size[0]:g} x {size[1]:g} without a unit (opened by "
            f"another reader). To record it, open the file with File > Open with Plugin > NeuroEdge, or {how}.")


def build_items(viewer: Any, membranes: Any, slices: list[int]) -> list[Any]:
    """ExportItems for ``slices`` of a membrane layer (image, label, ignore mask, prediction, provenance)."""
    from ...io.export import ExportItem

    image = tracking.image_of(viewer, membranes)
    if image is None:
        raise ValueError(f"cannot find the image layer of '{membranes.name}'; its name should be '<image> membranes'")
    data = tracking.image_array(image)
    if tuple(data.shape) != tuple(membranes.data.shape):
        raise ValueError(f"image '{image.name}' {tuple(data.shape)} and '{membranes.name}' "
                         f"{tuple(membranes.data.shape)}: shapes differ")
    led = tracking.ledger_of(membranes)
    pixel_size, unit = pixel_size_of(image)
    items = []
    for z in slices:
        img = tracking.slice_of(data, z)
        arrays = slice_arrays(viewer, membranes, z)
        item_meta: dict[str, Any] = {"source": source_of(image), "slice": int(z), "image_layer": image.name,
                                     "pixel_size": pixel_size, "pixel_size_unit": unit,
                                     "threshold": float(led.threshold), "edited": led.record(z).edited}
        item_meta.update(led.model_of(z) or {"model": None, "model_version": None})
        items.append(ExportItem(img, arrays.label, arrays.mask, arrays.prediction, item_meta))
    return items


class ExportWidget(NeuroEdgeWidget):
    """Export the corrected slices of a membrane layer to a training-set folder."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None, scroll: bool = True) -> None:
        super().__init__(napari_viewer, parent, scroll)
        from napari.layers import Labels

        self.membranes_combo = LayerCombo(self.viewer, (Labels,), tracking.is_membrane_layer)
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("training-set folder (created if needed)")
        self.browse_button = QPushButton("...")
        self.browse_button.setMaximumWidth(32)
        self.export_button = QPushButton("Export corrected slices")
        self.info = QLabel("")
        self.info.setWordWrap(True)
        self.confirmation = SecondClick(self.export_button, "Export anyway (see the warnings below)")
        row = QHBoxLayout()
        row.addWidget(self.folder_edit, 1)
        row.addWidget(self.browse_button)
        form = QFormLayout()
        form.addRow("membranes", self.membranes_combo)
        form.addRow("folder", row)
        lay = self.body_layout()
        lay.addLayout(form)
        lay.addWidget(self.export_button)
        lay.addWidget(self.info)
        lay.addStretch(1)
        self.browse_button.clicked.connect(self._browse)
        self.export_button.clicked.connect(lambda: self.export())
        self.membranes_combo.currentIndexChanged.connect(lambda *_: self.refresh())
        self._relist = debounced(self, self.refresh)
        row_filler(self.session).ready.connect(self._relist.start)  # large slices: rows from a thread
        self.session.corrections_changed.connect(self._data_changed)
        self.folder_edit.textChanged.connect(self.confirmation.reset)
        self.refresh()

    def _data_changed(self, *_: Any) -> None:
        self.confirmation.reset()
        self._relist.start()

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Training-set folder", self.folder_edit.text() or str(Path.home()))
        if path:
            self.folder_edit.setText(path)

    def refresh(self) -> None:
        """List what Export will write (called ~300 ms after the last change of the corrections)."""
        layer = self.membranes_combo.layer()
        if layer is None:
            self.info.setText("Nothing to export yet: predict, correct, and mark slices corrected.")
            return
        corrected = tracking.ledger_of(layer).training_slices()
        text = f"{len(corrected)} slice(s) marked corrected: {', '.join(map(str, corrected)) or '-'}"
        image = tracking.image_of(self.viewer, layer)
        if image is not None:
            size, unit = pixel_size_of(image)
            if unit == UNKNOWN_UNIT:
                text += "\n" + unknown_pixel_size(image, size) + " It is exported as unknown."
            else:
                text += f"\nPixel size {size[0]:g} x {size[1]:g} {unit}."
        try:
            text += "\nWill export " + viewer_summary(self.viewer, layer,
                                                   later=row_filler(self.session).later(layer)).text
        except Exception as exc:  # a layer of the wrong shape: export says why when clicked
            text += f"\n(cannot describe the slices: {reason(exc)})"
        self.info.setText(text)

    def export(self, folder: str | None = None, confirmed: bool = False) -> list[dict[str, Any]]:
        """Export the corrected slices; returns the new manifest entries (errors become notifications).

        When a slice is flagged (:func:`..training_data.viewer_summary`), nothing is exported until the user
        clicks again (or ``confirmed``): the warnings are shown first."""
        layer = self.membranes_combo.layer()
        if layer is None:
            notify("No membrane layer to export: run Predict and correct some slices first.", "warning")
            return []
        folder = folder or self.folder_edit.text().strip()
        if not folder:
            notify("Choose a training-set folder to export to.", "warning")
            return []
        target = Path(folder).expanduser()
        led = tracking.ledger_of(layer)
        slices = led.training_slices()
        if not slices:
            notify("No slice is marked corrected: correct slices (they are ticked automatically when edited) or "
                   "use 'mark current slice corrected' in Correct.", "warning")
            return []
        try:
            items = build_items(self.viewer, layer, slices)
            summary = viewer_summary(self.viewer, layer, {it.meta["slice"]: it for it in items})
            if summary.warnings and not self.confirmation.confirmed((str(target), summary.key), confirmed):
                notify(f"Check the {len(summary.warnings)} warning(s) under Export; click again to export anyway.",
                       "warning")
                self.info.setText("Not exported yet. Will export " + summary.text)
                return []
            fresh = [it for it in items
                     if led.needs_export(it.meta["slice"], str(target.resolve()), _digest(it.label, it.mask))]
            if not fresh:
                notify(f"All {len(items)} corrected slice(s) were already exported to '{short_name(target)}' "
                       "unchanged.", "info")
                self.info.setText(f"All {len(items)} corrected slice(s) were already exported to {target} unchanged.")
                return []
            from ...io.export import export_slices

            entries = export_slices(target, fresh, prefix=_safe_prefix(layer.name))
        except Exception as exc:  # shape mismatch, permissions, full disk...
            report("Export failed; nothing was overwritten.", f"Cause: {reason(exc)} (details in the log).",
                   status=self.info, exc=exc)
            return []
        for it in fresh:
            led.mark_exported(it.meta["slice"], str(target.resolve()), _digest(it.label, it.mask))
        self.session.exported.emit(str(target))
        self.session.corrections_changed.emit(layer.name)
        self._relist.stop()  # the message below stays until the corrections change again
        notify(f"Exported {len(entries)} slice(s) to '{short_name(target)}' (details under Export).", "info")
        text = f"Exported {len(entries)} slice(s) to {target}: {', '.join(e['name'] for e in entries)}."
        if any(it.meta["pixel_size_unit"] == UNKNOWN_UNIT for it in fresh):
            image = tracking.image_of(self.viewer, layer)
            if image is not None:
                text += " " + unknown_pixel_size(image, pixel_size_of(image)[0]) + " It was recorded as unknown."
            notify("Pixel size unknown; exported as 'unknown'.", "warning")
        self.info.setText(text)
        return entries


def _safe_prefix(name: str) -> str:
    base = name[: -len(tracking.SUFFIXES["membranes"])] if name.endswith(tracking.SUFFIXES["membranes"]) else name
    return base.replace(" ", "_") or "slice"
