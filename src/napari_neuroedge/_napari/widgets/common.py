"""Pieces shared by the NeuroEdge widgets: the job row (progress bar, ETA, Cancel) and the widget base class."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QSize, QTimer
from qtpy.QtWidgets import (QDoubleSpinBox, QFrame, QHBoxLayout, QLabel, QProgressBar, QPushButton, QScrollArea,
                            QSpinBox, QVBoxLayout, QWidget)

from ..session import get_session, unwrap_viewer
from ..workers import Job


def int_spin(lo: int, hi: int, value: int, *, step: int = 1, suffix: str = "", tooltip: str = "") -> QSpinBox:
    """A QSpinBox over [lo, hi] showing ``value``."""
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    if suffix:
        box.setSuffix(suffix)
    if tooltip:
        box.setToolTip(tooltip)
    return box


def float_spin(lo: float, hi: float, value: float, *, step: float | None = None, decimals: int | None = None,
               tooltip: str = "") -> QDoubleSpinBox:
    """A QDoubleSpinBox over [lo, hi] showing ``value``; ``decimals`` is set first so small ranges survive."""
    box = QDoubleSpinBox()
    if decimals is not None:
        box.setDecimals(decimals)
    box.setRange(lo, hi)
    if step is not None:
        box.setSingleStep(step)
    box.setValue(value)
    if tooltip:
        box.setToolTip(tooltip)
    return box


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def eta_seconds(started: float, done: int, total: int, now: float | None = None) -> float | None:
    """Remaining seconds by linear extrapolation of ``done`` of ``total`` since ``started`` (None if unknown)."""
    if done <= 0 or total <= 0:
        return None
    elapsed = (time.perf_counter() if now is None else now) - started
    return elapsed / done * max(total - done, 0)


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
        self.cancel_button.setToolTip("Stop after the current tile batch / training step; nothing is lost")
        lay.addWidget(self.bar, 1)
        lay.addWidget(self.cancel_button)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.job: Job | None = None
        self._stage_started = time.perf_counter()
        self._stage = ""
        self.cancel_button.clicked.connect(self.cancel)

    def attach(self, job: Job | None) -> None:
        self.job = job
        running = job is not None
        self.cancel_button.setEnabled(running)
        self.bar.setRange(0, 0 if running else 1)  # busy indicator until the first event
        self.bar.setValue(0)
        self.bar.setFormat("%p%")
        self._stage, self._stage_started = "", time.perf_counter()
        if running:
            self.status.setText(f"{job.name}: starting...")

    def cancel(self) -> None:
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.status.setText(f"{self.job.name}: cancelling after the current step...")
            self.cancel_button.setEnabled(False)

    def update_event(self, event: Any, extra: str = "") -> None:
        stage = getattr(event, "stage", "") or ""
        if stage != self._stage:
            self._stage, self._stage_started = stage, time.perf_counter()
        done, total = int(event.done), int(event.total)
        if total > 0:
            self.bar.setRange(0, total)
            self.bar.setValue(min(done, total))
        eta = eta_seconds(self._stage_started, done, total)
        unit = getattr(event, "unit", "") or ""
        text = f"{stage}: {done}/{total}{' ' + unit if unit else ''}" if total else stage
        if eta is not None and done < total:
            text += f" - ETA {format_seconds(eta)}"
        if extra:
            text += f" - {extra}"
        self.status.setText(text)

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
