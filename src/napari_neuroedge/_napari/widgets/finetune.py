"""One-click fine-tune: the selected model on the corrected slices (or an exported training set).

Runs :func:`napari_neuroedge.training.loop.iter_fit` in a background worker with all cores but one (the GUI
keeps one), shows progress with ETA and live loss / validation curves, and at the end saves the checkpoint
(with provenance) to the models folder (default ``~/.neuroedge/models/<timestamp>.pt``), selects it in Predict
and re-predicts the current slice. Cancel stops after the current step and keeps the last good checkpoint
(``<timestamp>-cancelled.pt``). A second fine-tune starts from the model selected then, i.e. the first result.

Above the button the widget lists what it will train on (:mod:`..training_data`: slices, labelled and membrane
fractions, pixels changed, slices left out, the held-out band); when a slice is flagged (almost no membrane,
almost nothing labelled) the first click only shows the warnings and a second click starts. "Clean run folders"
deletes the resume files (``last.pt``, ``best.pt``, ...) of the runs under ``<models>/runs`` after a second click,
never a model in the models folder or one listed in Predict, and says what it removed and how much space.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import (QAbstractSpinBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
                            QPushButton, QWidget)

from ...training.warmup import import_training_path
from .. import tracking
from ..actions import finetune_job, nearest_uncorrected, remove_run_folder
from .._qt_utils import LayerCombo, notify, reason, report
from ..text import clean_preview, cleaned, done_summary, will_train_on
from ..workers import Job, warm_up
from ..training_data import Summary, folder_summary, slice_arrays, viewer_summary, viewer_training_slices
from ..rows_later import row_filler
from .common import JobPanel, JobWidget, SecondClick, debounced, format_seconds
from .forms import finetune_form, finetune_options
from .plot import TrainingPlot

SOURCES = ("corrected slices in the viewer", "training-set folder")
ADVANCED_ARROWS = ("\u25b6", "\u25bc")  # collapsed, expanded
WARM_UP_DELAY_S = 2.0  # after the panel opens: its first paint done (bench_gui_latency.py)


class FinetuneWidget(JobWidget):
    """Fine-tune button, advanced settings, progress with ETA, live loss / validation plots."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None, scroll: bool = True) -> None:
        super().__init__(napari_viewer, parent, scroll)
        from napari.layers import Labels
        from superqt import QCollapsible

        self.source_combo = QComboBox()
        self.source_combo.addItems(list(SOURCES))
        self.membranes_combo = LayerCombo(self.viewer, (Labels,), tracking.is_membrane_layer)
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("exported training-set folder")
        self.model_label = QLabel("")
        self.data_label = QLabel("")
        self.data_label.setWordWrap(True)
        self.data_label.setToolTip("what Fine-tune will train on; updated as you correct")
        self.run_button = QPushButton("Fine-tune")
        self.confirmation = SecondClick(self.run_button, "Fine-tune anyway (see the warnings above)")
        self.clean_button = QPushButton("Clean run folders")
        self.clean_button.setToolTip("delete the resume files (last.pt, best.pt, step-*.pt) of past runs under "
                                     "'<save models in>/runs'; the models you keep are never deleted")
        self.clean_confirmation = SecondClick(self.clean_button, "Delete them (click again)")
        self.clean_label = QLabel("")
        self.clean_label.setWordWrap(True)
        self.jobs = JobPanel()
        self.loss_plot = TrainingPlot("training loss", y_label="loss", log_y=True)
        self.val_plot = TrainingPlot("held-out, last validation", y_label="score")
        self._parent_val: tuple[float, float] | None = None  # cross-fitted runs: the parent on this run's slices

        self.form = finetune_form(self.session.models_dir)
        f = self.form  # the Qt widgets under their old names (tests and the code below drive them)
        self.time_spin, self.steps_spin, self.holdout_spin = f.time.native, f.steps.native, f.holdout.native
        self.crop_spin, self.lr_spin, self.batch_spin = f.crop.native, f.lr.native, f.batch.native
        self.replay_spin, self.replay_edit = f.replay.native, f.replay_data.native
        self.corrected_weight_spin, self.save_edit = f.corrected_weight.native, f.save_dir.native
        self.parent_weight_spin = f.parent_weight.native
        self.replay_edit.setPlaceholderText("original training-set folder (optional)")
        self.lr_spin.setStepType(QAbstractSpinBox.StepType.AdaptiveDecimalStepType)  # arrows: +-10 %, typed: 1e-6
        # collapsed: the arrow points at the header's text (as napari's own sections); open: down at the content
        self.advanced = QCollapsible("Advanced", collapsedIcon=ADVANCED_ARROWS[0], expandedIcon=ADVANCED_ARROWS[1])
        self.advanced.addWidget(self.form.native)

        browse = QPushButton("...")
        browse.setMaximumWidth(32)
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.folder_edit, 1)
        row.addWidget(browse)
        form = QFormLayout()
        form.addRow("train on", self.source_combo)
        form.addRow("membranes", self.membranes_combo)
        form.addRow("folder", row)
        form.addRow("starts from", self.model_label)
        lay = self.body_layout()
        lay.addLayout(form)
        lay.addWidget(self.advanced)
        lay.addWidget(self.data_label)
        lay.addWidget(self.run_button)
        lay.addWidget(self.jobs)
        lay.addWidget(self.jobs.status)
        lay.addWidget(self.loss_plot)
        lay.addWidget(self.val_plot)
        lay.addWidget(self.clean_button)
        lay.addWidget(self.clean_label)
        lay.addStretch(1)

        self.run_button.clicked.connect(lambda: self.finetune())
        self.session.model_selected.connect(self._show_model)
        self.session.models_changed.connect(self._show_model)
        self.session.exported.connect(self._on_exported)
        self.source_combo.currentIndexChanged.connect(self._on_source_changed)
        self.clean_button.clicked.connect(lambda: self.clean_runs())
        self.save_edit.textChanged.connect(self.clean_confirmation.reset)
        self._summary_timer = debounced(self, self.refresh_summary)
        row_filler(self.session).ready.connect(self._summary_timer.start)  # large slices: rows from a thread
        for signal in (self.session.corrections_changed, self.membranes_combo.currentIndexChanged,
                       self.folder_edit.textChanged, self.holdout_spin.valueChanged):
            signal.connect(self._data_changed)
        for signal in (self.membranes_combo.currentIndexChanged, self.source_combo.currentIndexChanged,
                       self.folder_edit.textChanged):
            signal.connect(self._forget_other_run)
        self.job: Job | None = None
        self._run_source: Any = None  # what the run shown (bar, message, plots) trained on
        self._time_limited = False
        self.last_result: dict[str, Any] | None = None
        self._image_name: str | None = None
        self._folder_summary: tuple[Any, Summary] | None = None
        self._show_model()
        self._on_source_changed()
        self.refresh_summary()
        # the ~900 modules a fine-tune's first step would import (torch._dynamo, sympy, ...), while the user
        # corrects, once the window has painted the new dock: imported mid-job they held the GIL, and the window,
        # for 0.2 s at a time (issue 22)
        self.warm_up = warm_up("training", import_training_path, delay_s=WARM_UP_DELAY_S)
        self._summary_timer.stop()  # _on_source_changed started it; the summary is already shown

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Training-set folder", self.folder_edit.text() or str(Path.home()))
        if path:
            self.folder_edit.setText(path)

    def _show_model(self, *_: Any) -> None:
        self.model_label.setText(self.session.selected_model or "(no model)")

    def _on_exported(self, folder: str) -> None:
        if not self.folder_edit.text().strip():
            self.folder_edit.setText(folder)

    def _on_source_changed(self, *_: Any) -> None:
        from_folder = self.source_combo.currentText() == SOURCES[1]
        self.folder_edit.setEnabled(from_folder)
        self.membranes_combo.setEnabled(not from_folder)
        self._data_changed()

    def _data_changed(self, *_: Any) -> None:
        self.confirmation.reset()
        self._summary_timer.start()

    def _source_key(self) -> Any:
        """What a click would train on: the chosen membrane layer, or the chosen folder."""
        if self.source_combo.currentText() == SOURCES[1]:
            return SOURCES[1], self.folder_edit.text().strip()
        return SOURCES[0], self.membranes_combo.currentText()

    def _forget_other_run(self, *_: Any) -> None:
        """Another layer or folder chosen: the last run's bar, message and curves were about other data."""
        if self.job is None and self._run_source is not None and self._source_key() != self._run_source:
            self._run_source = None
            self.last_result = None
            self.jobs.clear()
            self.loss_plot.clear()
            self.val_plot.clear()
            self.val_plot.title, self._parent_val = "held-out, last validation", None

    def summary(self) -> Summary | None:
        """What a click would train on (None: no data chosen yet); see :mod:`..training_data`."""
        if self.source_combo.currentText() == SOURCES[1]:
            manifest = Path(self.folder_edit.text().strip()).expanduser() / "manifest.json"
            if not manifest.exists():
                return None
            key = (str(manifest), manifest.stat().st_mtime_ns)  # a folder is read again only when it changed
            if self._folder_summary is None or self._folder_summary[0] != key:
                self._folder_summary = (key, folder_summary(manifest.parent))
            return self._folder_summary[1]
        membranes = self.membranes_combo.layer()
        if membranes is None:
            return None
        return viewer_summary(self.viewer, membranes, later=row_filler(self.session).later(membranes))

    def _summary_text(self, summary: Summary) -> str:
        return will_train_on(summary.text, self.holdout_spin.value(), len(summary.slices))

    def refresh_summary(self) -> None:
        """Show what Fine-tune will train on (called after corrections, a new source or folder)."""
        try:
            summary = self.summary()
        except Exception as exc:  # an unreadable folder, a layer of the wrong shape: the click says why
            self.data_label.setText(f"Cannot describe the training data: {reason(exc)}.")
            return
        self.data_label.setText(self._summary_text(summary) if summary is not None else
                                "Will train on: choose a membrane layer with corrected slices, or an exported folder.")

    def options(self) -> Any:
        """The form as the core's FinetuneOptions (untouched form = the CLI's defaults)."""
        return finetune_options(self.form, self.session.state.device)

    def finetune(self, confirmed: bool = False) -> Job | None:
        """Start fine-tuning the selected model; returns the job or None (after a notification saying why).

        When a slice is flagged (almost no membrane, almost nothing labelled), the first call shows the warnings
        and returns None; the next one (a second click), or ``confirmed``, starts."""
        model = self.session.selected_model
        if not model:
            notify("No model to fine-tune: choose or load one in Predict.", "error")
            return None
        raw, folder, image_name = None, None, None
        if self.source_combo.currentText() == SOURCES[1]:
            folder = self.folder_edit.text().strip()
            if not folder or not (Path(folder).expanduser() / "manifest.json").exists():
                notify("Choose an exported training-set folder (it holds manifest.json); export corrected slices "
                       "with Export first.", "warning")
                return None
            folder = str(Path(folder).expanduser())
            try:
                summary = self.summary()  # cached by the manifest's modification time
            except Exception as exc:
                report("Cannot read the training-set folder.", f"{reason(exc)}.", status=self.jobs.status, exc=exc)
                return None
            image_name = self.session.state.image or None  # the image chosen in Predict
        else:
            membranes = self.membranes_combo.layer()
            if membranes is None:
                notify("No membrane layer: predict, correct some slices, then fine-tune.", "warning")
                return None
            try:
                arrays = {z: slice_arrays(self.viewer, membranes, z) for z in tracking.ledger_of(membranes).corrected}
                raw = viewer_training_slices(self.viewer, membranes, arrays)
                summary = viewer_summary(self.viewer, membranes, arrays)
            except ValueError as exc:
                report("Cannot collect the corrected slices.", f"{reason(exc)}.", status=self.jobs.status, exc=exc)
                return None
            if not raw:
                notify("No slice is marked corrected: brush corrections (edited slices are ticked) or mark a "
                       "slice corrected in Correct." + (" Slices painted without a prediction are not ticked."
                                                        if summary.notes else ""), "warning")
                self.data_label.setText(self._summary_text(summary))
                return None
            image = tracking.image_of(self.viewer, membranes)
            image_name = image.name if image is not None else None
        self.data_label.setText(self._summary_text(summary))
        if summary.warnings and not self.confirmation.confirmed((folder, summary.key), confirmed):
            notify(f"Check the {len(summary.warnings)} warning(s) above the Fine-tune button; click again to "
                   "fine-tune anyway.", "warning")
            return None
        replay_folder = self.replay_edit.text().strip() or None
        if replay_folder and not (Path(replay_folder).expanduser() / "manifest.json").exists():
            notify(f"Replay folder {replay_folder} is not a training-set folder (no manifest.json).", "warning")
            return None
        from ...io.atomic import unique_path

        models_dir = self.models_dir()
        try:
            models_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            report("Cannot create the models folder.", f"{reason(exc)}; choose another folder under Advanced > "
                   "'save models in'.", status=self.jobs.status, exc=exc)
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dest = unique_path(models_dir / f"{stamp}.pt")
        run_dir = unique_path(models_dir / "runs" / dest.stem)
        options = self.options()
        self._image_name = image_name
        self._run_source = self._source_key()
        self._time_limited = options.time_limit_s > 0
        self.loss_plot.clear()
        self.val_plot.clear()
        self.val_plot.title, self._parent_val = "held-out, last validation", None
        job = self.start_job(
            f"Fine-tune {model}", {"finetune"},
            lambda j: finetune_job(j, self.session, model, raw, folder, replay_folder, options, run_dir, dest),
            total=options.steps)
        if job is not None:
            job.extra["run_dir"] = run_dir
        return job

    def models_dir(self) -> Path:
        """Where fine-tuned models go (Advanced > 'save models in'); their run folders are in its ``runs/``."""
        return Path(self.save_edit.text().strip() or self.session.models_dir).expanduser()

    def clean_runs(self, confirmed: bool = False) -> Any:
        """Delete the resume files of the run folders under ``<models>/runs`` (a second click, or ``confirmed``,
        deletes; the first one lists them). Never deletes a model of the models folder or one listed in Predict.
        Returns the :class:`~napari_neuroedge.training.run_folder.CleanPlan` deleted, or None."""
        from ...training.run_folder import clean, plan_clean, run_folders

        if self.job is not None:
            notify("Wait until the fine-tune ends before cleaning its run folder.", "warning")
            return None
        root = self.models_dir() / "runs"
        listed = [Path(src) for src in self.session.models.values() if Path(src).suffix]  # paths, not bundled names
        try:
            plan = plan_clean(run_folders(root), keep=listed)
        except OSError as exc:
            report("Cannot read the run folders.", f"{reason(exc)}.", status=self.clean_label, exc=exc)
            return None
        if not plan.files:
            self.clean_confirmation.reset()
            self.clean_label.setText(f"Nothing to clean: no resume files under {root}.")
            return None
        if not self.clean_confirmation.confirmed((str(root), tuple(plan.files)), confirmed):
            self.clean_label.setText(clean_preview(plan, root))
            return None
        done = clean(plan)
        self.clean_label.setText(cleaned(done, root))
        notify(f"Run folders cleaned: {done.nbytes / 1e6:.1f} MB freed.", "info")
        return done

    # ------------------------------------------------------------------ handlers
    def _on_event(self, job: Job, event: Any) -> None:
        info = event.info or {}
        extra = ""
        if "loss" in info:
            self.loss_plot.add_point("loss", event.done, float(info["loss"]), "#4fc3f7")
            extra = f"loss {info['loss']:.4f}"
        if "val" in info:
            extra = self._on_validation(event.done, info, extra)
        self.jobs.update_event(event, extra, estimated=self._time_limited and event.stage == "train")

    def _on_validation(self, step: int, info: dict[str, Any], extra: str) -> str:
        """Plot one validation; returns the status text. One run: held-out F1 and Rand error, the parent's as
        dashed lines. Cross-fitted runs (``info["folds"]`` > 1) validate on different slices, each against the
        parent on the same slices: the plot shows the change from the parent, the parent at 0."""
        val = info["val"]
        f1, rand = float(val.get("f1", float("nan"))), float(val.get("rand_error", float("nan")))
        folds, fold = int(info.get("folds", 1)), int(info.get("fold", 1))
        if info.get("init") or step == 0:  # the parent, validated before the run's first step: the reference
            if folds > 1:
                self._parent_val = (f1, rand)
                self.val_plot.title = "held-out, change from the parent"
                self.val_plot.set_reference("the parent", 0.0, "#9e9e9e")
                return (f"run {fold} of {folds}: the parent's F1 {f1:.3f}, Rand error {rand:.3f} on the slices "
                        "this run does not train on")
            self.val_plot.set_reference("parent F1", f1, "#81c784")
            self.val_plot.set_reference("parent Rand err", rand, "#e57373")
            return f"parent's held-out F1 {f1:.3f}, Rand error {rand:.3f}"
        if folds > 1 and self._parent_val is not None:
            pf1, prand = self._parent_val
            self.val_plot.add_point("F1 gain", step, f1 - pf1, "#81c784")
            self.val_plot.add_point("Rand err change", step, rand - prand, "#e57373")
            return extra + f", run {fold} of {folds}: held-out F1 {f1:.3f} (parent {pf1:.3f})"
        self.val_plot.add_point("F1", step, f1, "#81c784")
        self.val_plot.add_point("Rand err", step, rand, "#e57373")
        return extra + f", held-out F1 {f1:.3f}"

    def _mark_kept(self, name: str, outcome: Any) -> int | None:
        """Mark the kept checkpoint's step on the curves; returns it (None if it cannot be read). A parent the
        guard kept is this run's step 0 (its validation before the first step), not its own training step."""
        parent = bool(getattr(outcome, "parent_kept", False))
        mean = str(getattr(outcome, "kept", "")).startswith("the mean of")  # two runs: marked at the end
        try:
            step = 0 if parent else int(outcome.steps) if mean else int(self.session.checkpoint(name).step)
        except Exception:
            return None
        label = "kept: the parent" if parent else "kept: the mean of the two runs" if mean else f"kept (step {step:,})"
        for plot in (self.loss_plot, self.val_plot):
            plot.mark_kept(step, label)
        return step

    def _on_done(self, job: Job, outcome: Any) -> None:
        self.last_result = outcome
        name = self.session.add_model(str(outcome.path), select=True)
        msg = (f"Model '{name}' saved with the parent's weights (fine-tuning did not beat it) and selected in Predict"
               if getattr(outcome, "parent_kept", False) else f"Fine-tuned model '{name}' saved and selected in Predict")
        job.extra["model_name"] = name
        state = self.session.state
        repredict = None
        if state.can_predict() and self._image_name and self._image_name in self.viewer.layers:
            z = nearest_uncorrected(self.viewer, self.viewer.layers[self._image_name])
            repredict = state.request_prediction(self._image_name, "current slice").job  # Predict answers
            job.extra["repredict"] = repredict
            job.extra["repredicted_slice"] = z
            if repredict is not None:
                msg += f"; re-predicting slice {z}, which you did not correct" if z is not None else \
                    "; re-predicting the current slice"
        elapsed = format_seconds(time.perf_counter() - job.started_at)
        kept = self._mark_kept(name, outcome)
        self.jobs.finish(f"{msg}. {done_summary(outcome, kept, elapsed)} Saved as {outcome.path}.")
        notify(msg + ".", "info")

    def _on_cancelled(self, job: Job) -> None:
        outcome = job.extra.get("outcome")
        if outcome is not None and outcome.path is not None:
            name = self.session.add_model(str(outcome.path), select=False)
            self._mark_kept(name, outcome)
            toast = f"Fine-tuning cancelled; the last validated checkpoint is kept as '{name}' in Predict's list."
            msg = f"{toast} Saved as {outcome.path}."
        else:
            toast = msg = "Fine-tuning cancelled before the first validation; no model was kept"
            run_dir = job.extra.get("run_dir")
            if run_dir is not None and remove_run_folder(Path(run_dir)):
                msg += f", and its run folder {run_dir} was removed"
            elif run_dir is not None:
                msg += f"; its run folder {run_dir} could not be removed (see the log)"
            toast, msg = toast + ".", msg + "."
        self.jobs.finish(msg, "cancelled")
        notify(toast, "info")

    def _on_error(self, job: Job, exc: BaseException) -> None:
        self.jobs.finish("", "failed")
        if "out of memory" in str(exc).lower():
            report("Fine-tuning ran out of memory.", "Lower the crop size or batch, or use the CPU.",
                   status=self.jobs.status, exc=exc)
        else:
            report("Fine-tuning failed; nothing was saved.", f"Cause: {reason(exc)} (details in the log).",
                   status=self.jobs.status, exc=exc)
