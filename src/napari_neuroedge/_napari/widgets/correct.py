"""Correct widget: what makes brushing membranes fast on top of napari's own paint / erase / fill / undo.

Brush presets (1, 2, 3, 5 px), a key (``O``) and a button to toggle the prediction overlay, the list of slices
the user edited (tracked from the Labels layer's ``paint`` events) with a corrected / not corrected tick, a
"difference to prediction" layer (against the prediction the user corrected, even after a later prediction),
"next most uncertain slice" (mean TTA variance, skipping corrected slices) and an ignore layer for regions that
should not be used for training.

Training data integrity: a stroke on a slice that was never predicted does not make it "corrected" (one stroke
on an empty slice would teach the model that everything else is background); the slice is listed as "never
predicted" with a warning, and becomes training data only when the user marks it corrected, which says what
that means (its labels are ground truth everywhere).
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (QCheckBox, QFormLayout, QGridLayout, QLabel, QListWidget, QListWidgetItem,
                            QPushButton, QWidget)

from .. import tracking
from ..actions import update_difference
from .._qt_utils import LayerCombo, notify
from .common import NeuroEdgeWidget

BRUSH_PRESETS = (1, 2, 3, 5)
TOGGLE_KEY = "o"
IGNORE_COLOR = (0.6, 0.6, 0.6, 1.0)
_KEY_BOUND: weakref.WeakSet[Any] = weakref.WeakSet()  # membrane layers with the toggle key bound


def prediction_of(viewer: Any, membranes: Any, z: int) -> np.ndarray | None:
    """The prediction the user corrected on slice ``z`` (uint8 1 = membrane), or None if never predicted: the one
    shown when they first edited or marked the slice, so a later prediction (e.g. by a fine-tuned model) does not
    change the difference view, the exported prediction or the corrected-pixel weights."""
    return tracking.reference_prediction(viewer, membranes, z)


def scratch_meaning(z: int, membrane_fraction: float) -> str:
    """What marking a never-predicted slice corrected means, in one paragraph."""
    return (f"Slice {z} was never predicted, so marking it corrected declares ALL its labels ground truth: every "
            f"pixel not painted as membrane is trained as 'not membrane' ({membrane_fraction:.1%} of the slice is "
            "membrane now). Paint ignore regions over the parts you have not labelled.")


def toggle_prediction(viewer: Any, membranes: Any) -> bool | None:
    """Show / hide the image's boundary-probability overlay; returns the new visibility (None: no overlay)."""
    image = tracking.image_of(viewer, membranes)
    boundary = tracking.companion(viewer, image.name, "boundary") if image is not None else None
    if boundary is None:
        return None
    boundary.visible = not boundary.visible
    return boundary.visible


def bind_toggle_key(viewer: Any, layer: Any) -> None:
    """Bind :data:`TOGGLE_KEY` on ``layer`` (active while brushing it) to :func:`toggle_prediction`."""
    viewer_ref = weakref.ref(viewer)

    def _toggle(lay: Any) -> None:
        v = viewer_ref()
        if v is not None:
            toggle_prediction(v, lay)

    try:
        layer.bind_key(TOGGLE_KEY, _toggle, overwrite=True)
    except Exception as exc:  # key bindings changed across napari versions; the button still works
        notify(f"could not bind the '{TOGGLE_KEY}' key: {exc}", "warning")


def next_uncertain_slice(viewer: Any, membranes: Any, after: int | None = None) -> int | None:
    """Predicted, not-yet-corrected slice with the highest mean TTA variance, or None.

    ``after``: the slice on screen; when it is one of the candidates the next one down the ranking is returned
    (after the last, the first again), so asking again moves on instead of staying put."""
    image = tracking.image_of(viewer, membranes)
    unc = tracking.companion(viewer, image.name, "uncertainty") if image is not None else None
    led = tracking.ledger_of(membranes)
    if unc is None or not led.uncertain:
        return None
    candidates = sorted(led.uncertain - led.corrected)
    if not candidates:
        return None
    scores = {z: float(np.mean(tracking.slice_of(tracking.image_array(unc), z))) for z in candidates}
    ranking = sorted(candidates, key=lambda z: (-scores[z], z))
    if after in ranking:
        return ranking[(ranking.index(after) + 1) % len(ranking)]
    return ranking[0]


class CorrectWidget(NeuroEdgeWidget):
    """Brush presets, edited-slice list, difference view, next uncertain slice, ignore layer."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None, scroll: bool = True) -> None:
        super().__init__(napari_viewer, parent, scroll)
        from napari.layers import Labels

        self.membranes_combo = LayerCombo(self.viewer, (Labels,), tracking.is_membrane_layer)
        self._scratch_fractions: dict[tuple[int, int], float] = {}  # (layer id, slice): membrane when marked
        self._shown: Any = None
        self.brush_buttons: dict[int, QPushButton] = {}
        brushes = QGridLayout()  # three to a row: the dock stays narrow (napari's buttons are wide)
        for i, size in enumerate(BRUSH_PRESETS):
            button = QPushButton(f"{size} px")
            button.setToolTip(f"paint membrane with a {size} px brush")
            button.clicked.connect(lambda _=False, s=size: self.set_brush(s))
            self.brush_buttons[size] = button
            brushes.addWidget(button, i // 3, i % 3)
        self.erase_button = QPushButton("erase")
        self.erase_button.clicked.connect(self.set_erase)
        brushes.addWidget(self.erase_button, len(BRUSH_PRESETS) // 3, len(BRUSH_PRESETS) % 3)
        self.toggle_button = QPushButton(f"toggle prediction overlay  [{TOGGLE_KEY.upper()}]")
        self.diff_check = QCheckBox("show difference to prediction")
        self.diff_check.setToolTip("'<image> difference': green = membrane you added, magenta = membrane you removed")
        self.slice_list = QListWidget()
        self.slice_list.setToolTip("slices you edited; ticked = corrected (exported / used for fine-tuning). "
                                   "Double-click to go there.")
        self.mark_button = QPushButton("mark current slice corrected")
        self.unmark_button = QPushButton("not corrected")
        self.next_button = QPushButton("next most uncertain slice")
        self.ignore_button = QPushButton("paint ignore regions")
        self.ignore_button.setToolTip("adds '<image> ignore': painted pixels are left out of training")
        self.summary = QLabel("")
        self.summary.setWordWrap(True)

        form = QFormLayout()
        form.addRow("membranes", self.membranes_combo)

        grid = QGridLayout()
        grid.addWidget(self.mark_button, 0, 0)
        grid.addWidget(self.unmark_button, 0, 1)
        grid.addWidget(self.next_button, 1, 0)
        grid.addWidget(self.ignore_button, 1, 1)
        lay = self.body_layout()
        lay.addLayout(form)
        lay.addWidget(QLabel("brush:"))
        lay.addLayout(brushes)
        lay.addWidget(self.toggle_button)
        lay.addWidget(self.diff_check)
        lay.addWidget(QLabel("edited slices (tick = corrected):"))
        lay.addWidget(self.slice_list)
        lay.addLayout(grid)
        lay.addWidget(self.summary)

        self.toggle_button.clicked.connect(self.toggle_overlay)
        self.diff_check.toggled.connect(self._on_diff_toggled)
        self.mark_button.clicked.connect(lambda: self.mark_current(True))
        self.unmark_button.clicked.connect(lambda: self.mark_current(False))
        self.next_button.clicked.connect(self.go_next_uncertain)
        self.ignore_button.clicked.connect(self.add_ignore_layer)
        self.slice_list.itemChanged.connect(self._on_item_changed)
        self.slice_list.itemDoubleClicked.connect(self._on_item_double_clicked)
        self.membranes_combo.currentIndexChanged.connect(lambda *_: self.refresh())
        self.session.corrections_changed.connect(self._on_corrections_changed)
        self.session.slices_painted.connect(self._on_slices_painted)
        self.refresh()

    # ------------------------------------------------------------------ helpers
    def membranes(self, quiet: bool = False) -> Any:
        layer = self.membranes_combo.layer()
        if layer is None and not quiet:
            notify("No membrane layer yet: run Predict first (it creates '<image> membranes').", "warning")
        return layer

    def _hook(self, layer: Any) -> None:
        tracking.attach_tracking(layer, self.session)
        if layer not in _KEY_BOUND:
            bind_toggle_key(self.viewer, layer)
            _KEY_BOUND.add(layer)

    def refresh(self) -> None:
        """Re-list the edited slices of the chosen membrane layer (the widgets are touched only when what they
        show changed: a brush stroke calls this at every dab)."""
        layer = self.membranes(quiet=True)
        if layer is None:
            self._show([], "Run Predict to get a membrane layer to correct.")
            return
        self._hook(layer)
        led = tracking.ledger_of(layer)
        rows = []
        for z in sorted(led.edited | led.corrected):
            tags = []
            if z in led.edited:
                tags.append("edited")
            if z in led.scratch:
                tags.append("never predicted")
            if z in led.exported:
                tags.append("exported")
            rows.append((z, f"slice {z}  ({', '.join(tags) or 'reviewed'})", z in led.corrected))
        text = f"{len(led.corrected)} slice(s) marked corrected, {len(led.edited)} edited."
        waiting = led.left_out()
        if waiting:
            text += (f"\nSlice {', '.join(map(str, waiting))}: painted but never predicted, so NOT training data. "
                     "Tick it (or 'mark current slice corrected') only if its labels are ground truth everywhere; "
                     "or predict it first and correct the prediction.")
        for z in sorted(led.corrected & led.scratch):  # said once here, not again by the mark
            key = (id(layer), z)  # read when marked, not at every dab of a stroke
            if key not in self._scratch_fractions:
                self._scratch_fractions[key] = float(np.mean(tracking.slice_of(layer.data, z) > 0))
            text += "\n" + scratch_meaning(z, self._scratch_fractions[key])
        self._show(rows, text)

    def _show(self, rows: list[tuple[int, str, bool]], text: str) -> None:
        if (rows, text) == self._shown:
            return
        self._shown = (rows, text)
        self.slice_list.blockSignals(True)
        self.slice_list.clear()
        for z, label, checked in rows:
            item = QListWidgetItem(label)
            item.setData(Qt.UserRole, z)
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(Qt.Checked if checked else Qt.Unchecked)
            self.slice_list.addItem(item)
        self.slice_list.blockSignals(False)
        self.summary.setText(text)

    def _on_corrections_changed(self, name: str) -> None:
        layer = self.membranes(quiet=True)
        if layer is None:
            self.membranes_combo.refresh()
            layer = self.membranes(quiet=True)
        if layer is not None and layer.name == name:
            self.refresh()

    def _on_slices_painted(self, name: str, slices: list[int]) -> None:
        """The user changed the labels of ``slices``: their difference to the prediction (not all slices')."""
        if self.diff_check.isChecked():
            # napari emits ``paint`` just before it writes the pixels: update once the stroke has landed
            QTimer.singleShot(0, lambda: self._update_difference_later(name, slices))

    def _update_difference_later(self, name: str, slices: list[int]) -> None:
        layer = self.membranes(quiet=True)
        if layer is not None and layer.name == name and self.diff_check.isChecked():
            update_difference(self.viewer, layer, slices, create=True)

    def _on_item_changed(self, item: QListWidgetItem) -> None:
        layer = self.membranes(quiet=True)
        if layer is not None:
            self.set_corrected(layer, int(item.data(Qt.UserRole)), item.checkState() == Qt.Checked)

    def _on_item_double_clicked(self, item: QListWidgetItem) -> None:
        layer = self.membranes(quiet=True)
        if layer is not None:
            tracking.go_to_slice(self.viewer, layer, int(item.data(Qt.UserRole)))

    # ------------------------------------------------------------------ actions
    def set_brush(self, size: int) -> None:
        """Paint membrane (label 1) with a ``size`` px brush on the membrane layer."""
        layer = self.membranes()
        if layer is None:
            return
        self._hook(layer)
        self.viewer.layers.selection.active = layer
        layer.selected_label = 1
        layer.brush_size = size
        layer.mode = "paint"

    def set_erase(self) -> None:
        layer = self.membranes()
        if layer is None:
            return
        self.viewer.layers.selection.active = layer
        layer.mode = "erase"

    def toggle_overlay(self) -> bool | None:
        layer = self.membranes()
        if layer is None:
            return None
        visible = toggle_prediction(self.viewer, layer)
        if visible is None:
            notify("No prediction overlay for this layer yet: run Predict.", "warning")
        return visible

    def mark_current(self, corrected: bool = True) -> int | None:
        """Mark the slice on screen corrected (or not); returns its index."""
        layer = self.membranes()
        if layer is None:
            return None
        z = tracking.current_slice(self.viewer, layer)
        self.set_corrected(layer, z, corrected)
        return z

    def set_corrected(self, layer: Any, z: int, corrected: bool) -> None:
        """Mark slice ``z`` corrected (training data) or not. Marking keeps its current prediction as the one
        corrected; on a never-predicted slice the notification and the summary say what marking means."""
        tracking.mark_corrected(self.viewer, layer, z, corrected)
        if not corrected:
            self._scratch_fractions.pop((id(layer), z), None)
        self.session.corrections_changed.emit(layer.name)
        # refresh() (on corrections_changed) put what marking a never-predicted slice means below
        if corrected and z in tracking.ledger_of(layer).scratch:
            notify(f"Slice {z} marked corrected: its labels are now ground truth everywhere.", "info")

    def _on_diff_toggled(self, on: bool) -> None:
        layer = self.membranes(quiet=not on)
        if layer is None:
            return
        image = tracking.image_of(self.viewer, layer)
        diff = tracking.companion(self.viewer, image.name, "difference") if image is not None else None
        if on:
            diff = update_difference(self.viewer, layer)
            if diff is not None:
                diff.visible = True
        elif diff is not None:
            diff.visible = False

    def go_next_uncertain(self) -> int | None:
        """Jump to the most uncertain uncorrected slice; returns its index (None: nothing to go to)."""
        layer = self.membranes()
        if layer is None:
            return None
        z = next_uncertain_slice(self.viewer, layer, after=tracking.current_slice(self.viewer, layer))
        if z is None:
            image = tracking.image_of(self.viewer, layer)
            unc = tracking.companion(self.viewer, image.name, "uncertainty") if image is not None else None
            if unc is None:
                notify("No uncertainty yet: in Predict choose TTA 6 or 8, tick 'TTA uncertainty' and predict "
                       "all slices.", "warning")
            else:
                notify("Every predicted slice is already marked corrected.", "info")
            return None
        tracking.go_to_slice(self.viewer, layer, z)
        self.viewer.layers.selection.active = layer
        return z

    def add_ignore_layer(self) -> Any:
        """Create (or select) ``<image> ignore``; painted pixels are excluded from training."""
        layer = self.membranes()
        if layer is None:
            return None
        image = tracking.image_of(self.viewer, layer)
        if image is None:
            notify("Cannot tell which image this membrane layer belongs to.", "warning")
            return None
        ignore = tracking.companion(self.viewer, image.name, "ignore")
        if ignore is None:
            ignore = self.viewer.add_labels(tracking.blank(tuple(layer.data.shape), np.uint8),
                                            name=tracking.layer_name(image.name, "ignore"), scale=layer.scale,
                                            translate=layer.translate, opacity=0.5,
                                            colormap=tracking.membrane_colormap({1: IGNORE_COLOR}),
                                            metadata={tracking.KEY: {"role": "ignore", "image": image.name}})
            meta = tracking.info(ignore)
            meta["role"], meta["image"] = "ignore", image.name
        tracking.attach_tracking(ignore, self.session)  # painting it changes the training data: Export, Fine-tune
        self.viewer.layers.selection.active = ignore
        ignore.selected_label = 1
        ignore.brush_size = 15
        ignore.mode = "paint"
        return ignore
