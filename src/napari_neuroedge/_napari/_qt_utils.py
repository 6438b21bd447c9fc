"""Small Qt/napari helpers shared by the widgets: notifications, liveness checks, weak event hookups, layer pickers."""

from __future__ import annotations

import logging
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from qtpy.QtWidgets import QComboBox, QWidget

from .text import short_name

log = logging.getLogger("napari_neuroedge")

# (level, message) of every notification this plugin raised, newest last (tests and bug reports read it)
HISTORY: deque[tuple[str, str]] = deque(maxlen=200)


def notify(message: str, level: str = "info", _log: bool = True) -> None:
    """Show a napari notification (info / warning / error) and keep it in :data:`HISTORY`."""
    HISTORY.append((level, message))
    if _log:
        log.log({"info": logging.INFO, "warning": logging.WARNING}.get(level, logging.ERROR), message)
    try:
        from napari.utils.notifications import show_error, show_info, show_warning

        {"info": show_info, "warning": show_warning}.get(level, show_error)(message)
    except Exception:  # a notification must never be what crashes the viewer
        log.exception("could not show notification")


def reason(exc: BaseException, limit: int = 160) -> str:
    """One readable line saying what went wrong in ``exc`` (its first line, shortened; no traceback text)."""
    text = str(exc).strip()
    if "out of memory" in text.lower():
        return "the device ran out of memory"
    if isinstance(exc, FileNotFoundError):
        return f"{short_name(exc.filename or text, 40)} does not exist"
    if isinstance(exc, PermissionError):
        return f"permission denied for {short_name(exc.filename or text, 40)}"
    first = text.splitlines()[0].strip().rstrip(".") if text else type(exc).__name__
    return first if len(first) <= limit else first[: limit - 1] + "\u2026"


def report(headline: str, advice: str = "", *, level: str = "error", status: Any = None,
           exc: BaseException | None = None) -> str:
    """Tell the user about a problem: ``headline`` (one short sentence, sized to fit napari's one-line toast)
    as the notification; ``headline advice`` in the widget's ``status`` label (word-wrapped, never cut); the
    advice and the exception with its traceback in the log. Returns the full sentence."""
    full = f"{headline} {advice}".strip()
    log.log({"info": logging.INFO, "warning": logging.WARNING}.get(level, logging.ERROR), "%s", full,
            exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None)
    notify(headline, level, _log=False)
    if status is not None and alive(status):
        status.setText(full)
    return full


def alive(obj: Any) -> bool:
    """False once the C++ side of a Qt object was deleted (or obj is None)."""
    if obj is None:
        return False
    try:
        obj.objectName()
    except RuntimeError:
        return False
    return True


def connect_weak(emitter: Any, owner: QWidget, method: str) -> Callable[..., None]:
    """Connect ``emitter`` (a napari EventEmitter) to ``owner.method`` without keeping ``owner`` alive.

    The connection removes itself once ``owner`` is gone or its Qt object was deleted.
    """
    ref = weakref.ref(owner)

    def callback(event: Any = None) -> None:
        target = ref()
        if target is None or not alive(target):
            try:
                emitter.disconnect(callback)
            except Exception:
                pass
            return
        getattr(target, method)(event)

    emitter.connect(callback)
    return callback


class LayerCombo(QComboBox):
    """A combo box listing the viewer's layers of some types, kept in sync with the layer list by name."""

    def __init__(self, viewer: Any, kinds: Iterable[type], predicate: Callable[[Any], bool] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._viewer_ref = weakref.ref(viewer)
        self.kinds = tuple(kinds)
        self.predicate = predicate
        self._hooked: set[int] = set()
        self.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        for name in ("inserted", "removed", "moved", "reordered"):
            emitter = getattr(viewer.layers.events, name, None)
            if emitter is not None:
                connect_weak(emitter, self, "refresh")
        self.refresh()

    def _layers(self) -> list[Any]:
        viewer = self._viewer_ref()
        if viewer is None:
            return []
        return [ly for ly in viewer.layers if isinstance(ly, self.kinds) and (self.predicate is None or
                                                                             self.predicate(ly))]

    def refresh(self, event: Any = None) -> None:
        """Re-list the layers, keeping the current choice when it still exists."""
        current = self.currentText()
        layers = self._layers()
        names = [ly.name for ly in layers]
        for ly in layers:  # follow renames
            if id(ly) not in self._hooked:
                connect_weak(ly.events.name, self, "refresh")
                self._hooked.add(id(ly))
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current in names:
            self.setCurrentIndex(names.index(current))
        self.blockSignals(False)
        if current not in names:
            self.currentIndexChanged.emit(self.currentIndex())

    def layer(self) -> Any:
        """The chosen layer, or None."""
        viewer = self._viewer_ref()
        name = self.currentText()
        if viewer is None or not name or name not in viewer.layers:
            return None
        return viewer.layers[name]

    def set_layer(self, name: str) -> None:
        self.refresh()
        idx = self.findText(name)
        if idx >= 0:
            self.setCurrentIndex(idx)
