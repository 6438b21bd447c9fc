"""Predict widget: boundary probability, membrane labels, instances and TTA uncertainty for an image layer.

Builds a core :class:`~napari_neuroedge.inference.pipeline.PredictionRequest` from the form and runs the core
pipeline in a background worker (:func:`..actions.predict_job`, the same code path as ``neuroedge predict``).
Output layers are named after the image (``<image> boundary`` etc., see :mod:`..tracking`), updated in place on
re-runs, and keep the image's scale and translate. Slices the user has edited keep their membrane labels unless
"replace my corrections" is ticked (only the probability is refreshed there); :mod:`..landing` writes the
results into the layers.

Large or lazy images (memory-mapped TIFF, zarr, dask, or more than ``$NEUROEDGE_LAZY_VOXELS`` voxels) are read
band by band and predicted into OME-Zarr working arrays on disk (see :mod:`napari_neuroedge.io.workstore`), shown as
zarr-backed layers; the membrane layer stays paintable. Nothing of the volume's size is held in memory on that path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QFileDialog, QFormLayout, QLabel, QPushButton, QSizePolicy, QWidget

from ...io.workstore import wants_lazy
from .. import lazy_outputs, tracking
from ..actions import PredictResult, predict_job
from ..landing import apply_steps, run_to_end, voxel_size_nm
from .._qt_utils import LayerCombo, connect_weak, notify, reason, report, short_name
from ..state import LOAD_CHECKPOINT
from ..text import describe_model
from ..package_export import add_export_button, ask_package_path
from ..workers import Job
from .common import JobPanel, JobWidget
from .forms import TTA_CHOICES, predict_form


def _is_input_image(layer: Any) -> bool:
    return not getattr(layer, "rgb", False) and tracking.info_role(layer) in ("", "image")


def _rgb_advice() -> str:
    return ("Right-click the layer in the layer list > Split RGB, then predict one of the channels "
            "(or open the stack as grayscale).")


class PredictWidget(JobWidget):
    """Image + model + settings -> boundary / membranes / instances / uncertainty layers."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None, scroll: bool = True) -> None:
        super().__init__(napari_viewer, parent, scroll)
        from napari.layers import Image

        self.image_combo = LayerCombo(self.viewer, (Image,), _is_input_image)
        self.image_combo.currentIndexChanged.connect(self._publish_image)
        self._publish_image()
        self.session.state.predict_requested.connect(self._on_predict_requested)  # e.g. Fine-tune's re-predict
        self.model_combo = QComboBox()
        self.model_info = QLabel("")
        self.model_info.setWordWrap(True)
        found = self._devices()
        self.form = predict_form(found)
        f = self.form  # the Qt widgets under their old names (tests and the code below drive them)
        self.tile_spin, self.context_spin, self.tta_combo = f.tile.native, f.context.native, f.tta.native
        self.device_combo, self.device_found = f.device.native, f.found.native
        self.device_found.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)  # label column
        self.device_found.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)  # as wide as others
        self.threshold_spin, self.seed_spin = f.threshold.native, f.seed_threshold.native
        self.scope_combo, self.instances_check = f.scope.native, f.instances.native
        self.uncertainty_check, self.overwrite_check = f.uncertainty.native, f.overwrite.native
        self._threshold_model: str | None = None  # the model whose threshold the box was last set to
        self.run_button = QPushButton("Predict")
        self.jobs = JobPanel()

        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("model", self.model_combo)
        form.addRow("", self.model_info)
        lay = self.body_layout()
        lay.addLayout(form)
        lay.addWidget(self.form.native)
        lay.addWidget(self.run_button)
        lay.addWidget(add_export_button(self))
        lay.addWidget(self.jobs)
        lay.addWidget(self.jobs.status)
        lay.addStretch(1)

        self._refresh_models()
        self._on_tta_changed()
        self._on_device_changed(self.device_combo.currentText())  # a device restored from the last session
        self.session.models_changed.connect(self._refresh_models)
        self.session.model_selected.connect(self._on_session_model)
        self.model_combo.activated.connect(self._on_model_activated)
        self.tta_combo.currentIndexChanged.connect(self._on_tta_changed)
        self.device_combo.currentTextChanged.connect(self._on_device_changed)
        self.run_button.clicked.connect(lambda: self.predict())
        connect_weak(self.viewer.layers.selection.events.active, self, "_follow_selection")
        self.job: Job | None = None

    def _follow_selection(self, event: Any = None) -> None:
        """Selecting an image layer in the layer list chooses it here too (Predict runs on what you look at)."""
        layer = self.viewer.layers.selection.active
        if layer is not None and _is_input_image(layer) and type(layer).__name__ == "Image":
            self.image_combo.set_layer(layer.name)

    # ------------------------------------------------------------------ settings
    @staticmethod
    def _devices() -> list[str]:
        try:
            from ...inference.device import available_devices

            return available_devices()
        except Exception as exc:
            notify(f"could not query torch devices ({exc}); using the CPU", "warning")
            return ["cpu"]

    def _on_device_changed(self, text: str) -> None:
        self.session.state.set_device(text)

    def _publish_image(self, *_: Any) -> None:
        self.session.state.select_image(self.image_combo.currentText())

    def _on_predict_requested(self, request: Any) -> None:
        """Answer a :class:`~..state.PredictionRequest` (another widget asked for a prediction)."""
        request.job = self.predict(scope=request.scope, image_name=request.image)

    def _on_tta_changed(self, *_: Any) -> None:
        on = self.tta() > 1
        self.uncertainty_check.setEnabled(on)
        self.uncertainty_check.setToolTip("" if on else "needs TTA 6 or 8: the uncertainty is the TTA variance")
        if not on:
            self.uncertainty_check.setChecked(False)

    def tta(self) -> int:
        return TTA_CHOICES[self.tta_combo.currentText()]

    def _refresh_models(self) -> None:
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItems(list(self.session.models) + [LOAD_CHECKPOINT])
        idx = self.model_combo.findText(self.session.selected_model)
        self.model_combo.setCurrentIndex(max(idx, 0))
        self.model_combo.blockSignals(False)
        self._show_model_info()

    def _on_session_model(self, name: str) -> None:
        idx = self.model_combo.findText(name)
        if idx >= 0 and idx != self.model_combo.currentIndex():
            self.model_combo.setCurrentIndex(idx)
        self._show_model_info()

    def _on_model_activated(self, index: int) -> None:
        text = self.model_combo.itemText(index)
        if text == LOAD_CHECKPOINT:
            self.load_checkpoint()
        elif text in self.session.models:
            self.session.select_model(text)
            self._show_model_info()

    def _ask_checkpoint_path(self) -> str:
        """Ask the user for a checkpoint file (tests replace this)."""
        path, _ = QFileDialog.getOpenFileName(self, "Load a napari-neuroedge checkpoint", str(Path.home()),
                                              "Checkpoints or bioimage.io packages (*.pt *.pth *.zip *.yaml);;"
                                              "All files (*)")
        return path

    ask_package_path = ask_package_path  # "Export model (bioimage.io)" asks through this (tests replace it)

    def load_checkpoint(self, path: str | None = None) -> str | None:
        """Validate a checkpoint file, add it to the list and select it; errors become notifications."""
        path = path if path is not None else self._ask_checkpoint_path()
        if not path:
            self._refresh_models()
            return None
        try:
            from ...models.checkpoint import load_checkpoint

            load_checkpoint(path).build()
        except Exception as exc:  # CheckpointError, FileNotFoundError, OSError, ...
            name = short_name(path)
            what = "does not exist" if not Path(path).exists() else "is not a NeuroEdge model"
            report(f"{name} {what}.", f"Choose a .pt file saved by napari-neuroedge (training, fine-tuning or the "
                   f"bundled models) or a bioimage.io package of a 2D boundary model; the details are in the log. ({path})", status=self.jobs.status, exc=exc)
            self._refresh_models()
            return None
        name = self.session.add_model(path, select=True)
        self._refresh_models()
        return name

    def _show_model_info(self) -> None:
        name = self.session.selected_model
        if not name:
            self.model_info.setText("no model available")
            return
        try:
            ckpt = self.session.checkpoint(name)
        except Exception as exc:
            self.model_info.setText(f"cannot load: {reason(exc)}")
            return
        if name != self._threshold_model:  # a different model: use its threshold (the user may change it after)
            self._threshold_model = name
            self.threshold_spin.setValue(ckpt.threshold)
            self.seed_spin.setValue(ckpt.seed_threshold)
        note = str(ckpt.provenance.get("note", "")) if isinstance(ckpt.provenance, dict) else ""
        text = describe_model(ckpt)
        if note:
            text += f"\n{note}"
        self.model_info.setText(text)

    # ------------------------------------------------------------------ running
    def current_image(self) -> Any:
        return self.image_combo.layer()

    def _rgb_refusal(self, layer: Any) -> None:
        report(f"'{short_name(layer.name, 16)}' is RGB; NeuroEdge needs grayscale.", _rgb_advice(),
               level="warning", status=self.jobs.status)

    def _check_image(self, layer: Any) -> Any:
        """The layer's array if it can be predicted, else None (after a notification saying why).

        Predict runs on what the user sees: a selected RGB layer, or a hidden chosen layer, is refused with the
        reason instead of predicting another layer.
        """
        from napari.layers import Image

        active = self.viewer.layers.selection.active
        if (isinstance(active, Image) and getattr(active, "rgb", False) and active.visible
                and (layer is None or active is not layer)):
            self._rgb_refusal(active)  # the user selected (and sees) an RGB layer
            return None
        if layer is None:
            rgb = [ly for ly in self.viewer.layers if isinstance(ly, Image) and getattr(ly, "rgb", False)]
            if rgb:
                self._rgb_refusal(rgb[0])
            else:
                report("Open an EM image to predict.", "Drag a TIFF, zarr or folder of slices onto napari, or use "
                       "File > Open Sample > NeuroEdge.", level="warning", status=self.jobs.status)
            return None
        if getattr(layer, "rgb", False):
            self._rgb_refusal(layer)
            return None
        if not layer.visible:
            report(f"'{short_name(layer.name, 18)}' is hidden; show it first.",
                   "Predict runs on the layer you see: tick its eye in the layer list, or choose a visible "
                   "image in 'image'.", level="warning", status=self.jobs.status)
            return None
        from ...io.stacks import InputError, check_em_array

        data = tracking.image_array(layer)
        try:
            check_em_array(data, f"layer '{layer.name}'")
        except InputError as exc:
            report(f"'{short_name(layer.name, 18)}' cannot be predicted.", f"{reason(exc)}.", level="warning",
                   status=self.jobs.status, exc=exc)
            return None
        return data

    def predict(self, scope: str | None = None, image_name: str | None = None) -> Job | None:
        """Start a prediction job (scope "current slice" / "all slices"); returns the job or None."""
        if image_name is not None:
            self.image_combo.set_layer(image_name)
        layer = self.current_image()
        data = self._check_image(layer)
        if data is None:
            return None
        if not self.session.selected_model:
            report("No model is available.", "Load a checkpoint first (model > load checkpoint...).",
                   status=self.jobs.status)
            return None
        scope = scope or self.scope_combo.currentText()
        is_2d = data.ndim == 2
        if is_2d:
            slices = [0]
        elif scope == "current slice":
            slices = [tracking.current_slice(self.viewer, layer)]
        else:
            slices = list(range(int(data.shape[0])))
        threshold = float(self.threshold_spin.value())
        store = lazy_outputs.store_for(self.session) if wants_lazy(data) else None
        return self.start_job(
            f"Predict {layer.name}", {f"layer:{layer.name}"},
            lambda _job: predict_job(data, slices, is_2d, layer.name, self.session, self.session.selected_model,
                                self.device_combo.currentText(), int(self.tile_spin.value()),
                                int(self.context_spin.value()), self.tta(),
                                self.uncertainty_check.isChecked(), threshold, self.instances_check.isChecked(),
                                store, float(self.seed_spin.value()), voxel_size_nm(layer)))

    def _on_event(self, job: Job, event: Any) -> None:
        self.jobs.update_event(event)

    def _on_cancelled(self, job: Job) -> None:
        self.jobs.finish("Prediction cancelled; the layers were not changed.", "cancelled")
        notify("Prediction cancelled; the layers were not changed.", "info")

    def _on_error(self, job: Job, exc: BaseException) -> None:
        self.jobs.finish("", "failed")
        if "out of memory" in str(exc).lower():
            report("Prediction ran out of memory.", "Try a smaller tile size or the CPU.", status=self.jobs.status,
                   exc=exc)
        else:
            report("Prediction failed; layers unchanged.", f"Cause: {reason(exc)} (details in the log).",
                   status=self.jobs.status, exc=exc)

    def _on_done(self, job: Job, result: PredictResult) -> Any:
        """Land the results in the layers a slice (or a band of a large slice) per event-loop turn."""
        kept = yield from self.apply_steps(result)
        where = "the image" if result.is_2d else (f"slice {result.slices[0]}" if len(result.slices) == 1
                                                    else f"{len(result.slices)} slices")
        msg = f"Predicted {where} of '{result.image}' with {result.model.get('model', '?')}."
        if kept:
            msg += f" Kept your corrections on slice(s) {', '.join(map(str, kept))} (boundary updated)."
        self.jobs.finish(msg)

    # ------------------------------------------------------------------ writing layers
    def apply_result(self, result: PredictResult) -> list[int]:
        """Write a prediction into the output layers at once; returns edited slices whose labels were kept."""
        return run_to_end(self.apply_steps(result))

    def apply_steps(self, result: PredictResult) -> Any:
        """Write a prediction into the output layers in steps (:func:`..landing.apply_steps`), the form's
        "replace my corrections" deciding whether edited slices keep their labels; returns the kept slices."""
        return apply_steps(self.viewer, self.session, result, self.overwrite_check.isChecked(),
                           lambda msg: notify(msg, "warning"))
