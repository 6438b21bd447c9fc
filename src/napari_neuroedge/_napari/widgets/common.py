"""Pieces shared by the NeuroEdge widgets: the job row (progress bar, ETA, Cancel) and the widget base class."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qtpy.QtCore import QSize, QTimer
from qtpy.QtWidgets import (QFrame, QHBoxLayout, QLabel, QProgressBar, QPushButton, QScrollArea, QSizePolicy,
                            QVBoxLayout, QWidget)

from ...io.atomic import replace_atomically
from ..session import get_session, unwrap_viewer
from ..workers import Job

ENV_SETTINGS_DIR = "NEUROEDGE_SETTINGS_DIR"
log = logging.getLogger("napari_neuroedge")


def settings_dir() -> Path:
    """Where forms keep their values between sessions: ``$NEUROEDGE_SETTINGS_DIR`` or ``~/.neuroedge/settings``."""
    env = os.environ.get(ENV_SETTINGS_DIR, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".neuroedge" / "settings"


def persisted_form(name: str, widgets: Sequence[Any], transient: Sequence[str] = ()) -> Any:
    """A magicgui ``Container`` of ``widgets`` whose values outlive the session, in ``<settings_dir>/<name>.json``.

    Like magicgui's ``persist=True`` (which stardist-napari uses), but JSON instead of pickle, written at once on
    the GUI thread (magicgui debounces its write on a timer thread shared by all forms, so a change in one form
    followed within 0.2 s by one in another is lost), and only the fields that differ from their defaults are
    stored, so a new release's defaults reach the fields the user never changed. Fields named in ``transient``
    and labels are not kept. A stored value the field no longer accepts (a device that is gone, a value out of
    range) is skipped, as is an unreadable file.
    """
    from magicgui.widgets import Container, Label
    from magicgui.widgets.bases import ValueWidget

    form = Container()
    form.extend(widgets)  # added after construction, so magicgui gives all labels one width
    kept = [w for w in form if isinstance(w, ValueWidget) and not isinstance(w, Label) and w.name not in transient]
    defaults = {w.name: w.value for w in kept}
    path = settings_dir() / f"{name}.json"
    try:
        saved = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring the saved form %s: %s", path, exc)
        saved = {}
    for w in kept:
        if w.name in saved:
            try:
                w.value = saved[w.name]
            except (ValueError, TypeError):  # no longer a valid choice or in range: keep the default
                pass

    def save(*_: Any) -> None:
        changed = {w.name: w.value for w in kept if w.value != defaults[w.name]}
        try:
            replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(changed, indent=1)))
        except OSError as exc:  # a read-only home: the form still works, it just forgets
            log.warning("could not save the form's values to %s: %s", path, exc)

    form.changed.connect(save)
    return form


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def eta_seconds(started: float, done: int, total: int, now: float | None = None, done0: float = 0.0) -> float | None:
    """Remaining seconds by linear extrapolation of the progress made since ``started``, when ``done0`` of
    ``total`` was done (fractions of the total, so an estimated total that moves is fine); None until some
    progress was measured (a first event, right at the start, would read "0:00")."""
    if done <= 0 or total <= 0:
        return None
    frac = min(done / total, 1.0)
    if frac <= done0:
        return None
    elapsed = (time.perf_counter() if now is None else now) - started
    return elapsed / (frac - done0) * (1.0 - frac)


class JobPanel(QWidget):
    """Progress bar + status text with ETA + Cancel for the widget's current job."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setTextVisible(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        # the bar gives way, never the button: "Cancel" stays whole at the dock's narrowest
        self.cancel_button.setMinimumWidth(self.cancel_button.sizeHint().width())
        self.cancel_button.setSizePolicy(QSizePolicy.Policy.Minimum, QSizePolicy.Policy.Fixed)
        self.bar.setMinimumWidth(60)
        self.cancel_button.setToolTip("Stop after the current tile batch / training step; nothing is lost")
        lay.addWidget(self.bar, 1)
        lay.addWidget(self.cancel_button)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.job: Job | None = None
        self._stage_started = time.perf_counter()
        self._stage, self._stage_frac0 = "", 0.0
        self.cancel_button.clicked.connect(self.cancel)

    def attach(self, job: Job | None) -> None:
        self.job = job
        running = job is not None
        self.cancel_button.setEnabled(running)
        self.bar.setRange(0, 0 if running else 1)  # busy indicator until the first event
        self.bar.setValue(0)
        self.bar.setFormat("%p%")
        self._stage, self._stage_started, self._stage_frac0 = "", time.perf_counter(), 0.0
        if running:
            self.status.setText(f"{job.name}: starting...")

    def cancel(self) -> None:
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.status.setText(f"{self.job.name}: cancelling after the current step...")
            self.cancel_button.setEnabled(False)

    #: the bar's range when the total is an estimate (a time-limited training run): per mille of the work
    ESTIMATE_RANGE = 1000

    def update_event(self, event: Any, extra: str = "", estimated: bool = False) -> None:
        """Show a progress event: the bar, "stage: done/total unit - ETA m:ss - extra".

        ``estimated``: the event's total is an estimate that moves as the run goes (a time-limited training's
        steps): the bar then shows the fraction done on a fixed range and the text the count without a total.
        The ETA is measured from the stage's first event, so the first one shows none."""
        stage = getattr(event, "stage", "") or ""
        done, total = int(event.done), int(event.total)
        frac = min(done / total, 1.0) if total > 0 else 0.0
        if stage != self._stage:
            self._stage, self._stage_started, self._stage_frac0 = stage, time.perf_counter(), frac
        unit = getattr(event, "unit", "") or ""
        if total > 0 and estimated:
            self.bar.setRange(0, self.ESTIMATE_RANGE)
            self.bar.setValue(int(round(frac * self.ESTIMATE_RANGE)))
            text = f"{stage}: {done:,}{' ' + unit if unit else ''}"
        elif total > 0:
            self.bar.setRange(0, total)
            self.bar.setValue(min(done, total))
            text = f"{stage}: {done:,}/{total:,}{' ' + unit if unit else ''}"
        else:
            text = stage
        eta = eta_seconds(self._stage_started, done, total, done0=self._stage_frac0)
        if eta is not None and done < total:
            text += f" - ETA {format_seconds(eta)}"
        if extra:
            text += f" - {extra}"
        self.status.setText(text)

    def clear(self) -> None:
        """Forget the last job's bar and message (another layer or data was chosen)."""
        if self.job is not None:
            return
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setFormat("%p%")
        self.status.setText("")

    def finish(self, message: str, state: str = "done") -> None:
        """End the job display: ``state`` done fills the bar; cancelled / failed empty it and say so on it."""
        self.job = None
        self.cancel_button.setEnabled(False)
        if self.bar.maximum() == 0:
            self.bar.setRange(0, 1)
        if state == "done":
            self.bar.setValue(self.bar.maximum())
            self.bar.setFormat("%p%")
        else:
            self.bar.setValue(0)
            self.bar.setFormat(state)
        self.status.setText(message)


def debounced(parent: QWidget, fn: Callable[[], Any], ms: int = 300) -> QTimer:
    """A single-shot timer calling ``fn`` ``ms`` after its last ``start()`` (connect signals to ``start``): a
    summary that follows brush strokes is recomputed once the pixels have landed, not at every stroke."""
    timer = QTimer(parent)
    timer.setSingleShot(True)
    timer.setInterval(ms)
    timer.timeout.connect(fn)
    return timer


class SecondClick:
    """A confirmation without a modal dialog: an action that needs one is refused the first time with a given
    ``key`` (what it would do) and runs when asked again with the same key; the button says so meanwhile.

    ``confirmed(key)`` returns True on that second request (or when ``key`` was confirmed programmatically with
    ``force``); any other key, or :meth:`reset` (the data changed), starts over.
    """

    def __init__(self, button: QPushButton, confirm_text: str) -> None:
        self.button, self.text, self.confirm_text = button, button.text(), confirm_text
        self.pending: Any = None

    def confirmed(self, key: Any, force: bool = False) -> bool:
        if force or (self.pending is not None and self.pending == key):
            self.reset()
            return True
        self.pending = key
        self.button.setText(self.confirm_text)
        return False

    def reset(self, *_: Any) -> None:
        self.pending = None
        self.button.setText(self.text)


class NeuroEdgeWidget(QWidget):
    """Base class: keeps the viewer and its shared :class:`~napari_neuroedge._napari.session.Session`."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None, scroll: bool = True) -> None:
        super().__init__(parent)
        self.viewer = unwrap_viewer(napari_viewer)
        self.session = get_session(self.viewer)
        self.scroll = scroll
        self._body: QWidget | None = None

    STANDALONE_MIN_HEIGHT = 280  # docked on its own: at least this much of the form shows (the rest scrolls)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        hint = super().minimumSizeHint()
        if self._body is None:
            return hint
        return QSize(hint.width(), max(hint.height(), min(self._body.sizeHint().height(), self.STANDALONE_MIN_HEIGHT)))

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt API)
        super().showEvent(event)
        self.session.watch_window(self)  # docked and shown: stop the jobs and clean up when that window goes

    def body_layout(self) -> QVBoxLayout:
        """The layout to put the widget's controls in.

        With ``scroll`` (a widget docked on its own) the controls sit in a scroll area, so docking the widget
        beside another one does not squeeze that one to the controls' full height; the NeuroEdge panel scrolls its
        tabs itself and passes ``scroll=False``.
        """
        if not self.scroll:
            return QVBoxLayout(self)
        area = QScrollArea()
        area.setWidgetResizable(True)
        area.setFrameShape(QFrame.NoFrame)
        inner = self._body = QWidget()
        area.setWidget(inner)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(area)
        return QVBoxLayout(inner)


class JobWidget(NeuroEdgeWidget):
    """A widget that runs one background job at a time from ``self.run_button``, shown in ``self.jobs``.

    Subclasses create ``self.run_button`` and ``self.jobs`` (a :class:`JobPanel`) and define the
    ``_on_event``, ``_on_done``, ``_on_cancelled`` and ``_on_error`` handlers.
    """

    job: Job | None = None
    run_button: QPushButton
    jobs: JobPanel

    def start_job(self, title: str, resources: set[str], fn: Callable[[Job], Any], **kwargs: Any) -> Job | None:
        """Start ``fn`` in the session's job runner with this widget's handlers; None if it was refused."""
        self.session.watch_window(self)
        job = self.session.jobs.start(
            title, resources, fn, on_event=self._on_event, on_done=self._on_done,
            on_cancelled=self._on_cancelled, on_error=self._on_error, on_finally=self._on_finally, **kwargs)
        if job is not None and job.running:
            self.job = job
            self.jobs.attach(job)
            self.run_button.setEnabled(False)
        return job

    def _on_finally(self, job: Job) -> None:
        self.run_button.setEnabled(True)
        if self.job is job:
            self.job = None
