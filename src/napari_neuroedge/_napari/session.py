"""Per-viewer plugin session: the Qt side of the widgets' shared state (jobs, the checkpoint cache, closing with
the window, Qt signals).

One :class:`Session` exists per napari viewer (:func:`get_session`); it references the viewer only weakly. The
model list, the selected model, the image chosen for prediction and the device are its Qt-free
:class:`~.state.SessionState` (``session.state``), whose model events it forwards as Qt signals. Per-layer state
(which slices were edited / marked corrected / predicted, by which model) is each membrane layer's
:class:`~.ledger.Ledger` in its ``metadata["neuroedge"]`` (see :mod:`.tracking`), so it follows the layer.
"""

from __future__ import annotations

import functools
import os
import weakref
from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject, Signal

from ..inference.predictor_cache import PredictorCache
from ._qt_utils import log, notify
from .state import SessionState
from .workers import JobRunner

ENV_MODELS_DIR = "NEUROEDGE_MODELS_DIR"
ENV_SYNC = "NEUROEDGE_SYNC_JOBS"
CACHE_SIZE = 3  # checkpoints kept in memory (bounded: weights can be 100+ MB each)


def default_models_dir() -> Path:
    """Where fine-tuned checkpoints go: $NEUROEDGE_MODELS_DIR or ~/.neuroedge/models."""
    from ..models.registry import models_dir

    return models_dir()


class Session(QObject):
    """Shared state of the NeuroEdge widgets of one viewer."""

    models_changed = Signal()  # forwarded from ``state``
    model_selected = Signal(str)  # display name (forwarded from ``state``)
    corrections_changed = Signal(str)  # membrane layer name: its training data changed
    slices_painted = Signal(str, object)  # membrane layer name, the slices whose labels the user changed (list)
    exported = Signal(str)  # training-set folder

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self._viewer_ref = weakref.ref(viewer)
        background = os.environ.get(ENV_SYNC, "").strip() not in ("1", "true", "yes")
        self.jobs = JobRunner(viewer, background=background)
        self.state = SessionState()
        self.state.models_changed.connect(self._forward_models_changed)
        self.state.model_selected.connect(self._forward_model_selected)
        self.models_dir = default_models_dir()
        self._checkpoints = PredictorCache(CACHE_SIZE)  # loaded checkpoints by (path, mtime): a changed file reloads
        self.predictors = PredictorCache()  # prepared predictors, so a repeated Predict does not rebuild its model
        self._watched: set[int] = set()  # ids of the windows whose closing shuts this session down
        self._on_close: list[Any] = []  # called after the jobs stopped when the window goes (e.g. temp stores)
        self._refresh_bundled()

    @property
    def viewer(self) -> Any:
        return self._viewer_ref()

    # ------------------------------------------------------------------ models (kept in ``state``)
    def _forward_models_changed(self) -> None:
        self.models_changed.emit()

    def _forward_model_selected(self, name: str) -> None:
        self.model_selected.emit(name)

    @property
    def models(self) -> dict[str, str]:
        """Display name -> bundled name or checkpoint path (``state.models``)."""
        return self.state.models

    @property
    def selected_model(self) -> str:
        return self.state.selected_model

    def _refresh_bundled(self) -> None:
        try:
            from ..models.registry import bundled_models

            names = list(bundled_models())
        except Exception as exc:  # a broken install must not stop the widgets from opening
            notify(f"could not list the bundled models: {exc}", "warning")
            names = []
        self.state.add_bundled(names)

    def add_model(self, path: str | Path, select: bool = True, name: str | None = None) -> str:
        """Add a checkpoint file to the model list (validated by the caller); returns its display name."""
        return self.state.add_model(path, select, name)

    def select_model(self, name: str) -> None:
        self.state.select_model(name)

    def checkpoint(self, name: str | None = None) -> Any:
        """The :class:`~napari_neuroedge.models.checkpoint.Checkpoint` of a listed model (cached; thread-safe)."""
        from ..models.checkpoint import load_checkpoint
        from ..models.registry import resolve_checkpoint

        name = name or self.selected_model
        if name not in self.models:
            raise KeyError(f"no model called {name!r}; choose one in Predict")
        path = resolve_checkpoint(self.models[name])
        return self._checkpoints.lookup((str(path), path.stat().st_mtime), lambda: load_checkpoint(path))

    def model_meta(self, name: str | None = None) -> dict[str, Any]:
        """Provenance of a listed model for outputs: name, path, version (step, short sha256)."""
        from ..models.checkpoint import file_sha256
        from ..models.registry import resolve_checkpoint

        name = name or self.selected_model
        path = resolve_checkpoint(self.models[name])
        ckpt = self.checkpoint(name)
        digest = file_sha256(path)
        versions = ckpt.provenance.get("versions", {}) if isinstance(ckpt.provenance, dict) else {}
        return {"model": name, "model_path": str(path), "model_arch": ckpt.arch,
                "model_version": f"step {ckpt.step}, sha256 {digest[:12]}",
                "model_software": versions.get("napari_neuroedge", "")}

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        """Stop all jobs (the viewer is closing), then run the close callbacks."""
        self.jobs.shutdown(wait=10.0)
        self.predictors.clear()
        self._checkpoints.clear()
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("clean-up after closing the viewer failed")

    def on_close(self, callback: Any) -> None:
        """Call ``callback()`` when the viewer's window goes, after the jobs stopped."""
        self._on_close.append(callback)

    def watch_window(self, widget: Any) -> None:
        """Shut this session down when the main window holding ``widget`` (a docked plugin widget) is destroyed.

        Found with Qt's own ``QWidget.window()``, so no private napari attribute is needed; a widget that is not
        docked in a main window is skipped (its jobs still stop: napari cancels its tasks on close, and a job
        stops when the widget that started it is destroyed).
        """
        from qtpy.QtWidgets import QMainWindow

        try:
            window = widget.window()
        except RuntimeError:  # the widget is already gone
            return
        if not isinstance(window, QMainWindow) or id(window) in self._watched:
            return
        self._watched.add(id(window))
        window.destroyed.connect(functools.partial(_on_window_destroyed, weakref.ref(self)))


_SESSIONS: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()


def _on_window_destroyed(ref: weakref.ReferenceType, *_: Any) -> None:
    session = ref()
    if session is not None:
        session.shutdown()


def unwrap_viewer(viewer: Any) -> Any:
    """The real viewer behind napari's ``PublicOnlyProxy`` (what plugin widgets receive from the Plugins menu).

    The widgets keep layers in weak references and compare them by identity; proxies are created afresh on every
    attribute access, so the widgets work on the viewer itself (on the GUI thread only).
    """
    return getattr(viewer, "__wrapped__", viewer)


def get_session(viewer: Any) -> Session:
    """The :class:`Session` of ``viewer`` (created on first use; stops its jobs when the window goes)."""
    viewer = unwrap_viewer(viewer)
    session = _SESSIONS.get(viewer)
    if session is None:
        session = Session(viewer)
        _SESSIONS[viewer] = session
        from .tracking import track_viewer

        track_viewer(viewer, session)
    return session
