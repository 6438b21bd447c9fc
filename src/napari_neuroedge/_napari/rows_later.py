"""Summary rows of large slices computed off the GUI thread, for the Export and Fine-tune summaries.

Reading and counting one 4096^2 slice (its labels, the prediction it corrects, its ignore paint) held the GUI
thread for 0.8 s after every stroke. :class:`RowFiller` (one per viewer session, :func:`row_filler`) computes
:func:`~.training_data.compute_row` in one background thread for the slices a summary passed to its ``later``
(:func:`~.training_data.viewer_summary`), stores them unless a stroke dropped rows meanwhile
(:func:`~.training_data.store_row`), and emits :attr:`RowFiller.ready` so the widgets describe the data again.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from qtpy.QtCore import QObject, Signal

from . import tracking
from ._qt_utils import log
from .training_data import compute_row, store_row
from .workers import lower_thread_priority

__all__ = ["RowFiller", "row_filler"]


class RowFiller(QObject):
    """Computes summary rows in a thread; :attr:`ready` (GUI thread) says new rows are cached."""

    ready = Signal()
    _computed = Signal(object)  # emitted by the thread, delivered in the GUI thread (a queued connection)

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self._viewer_ref = weakref.ref(viewer)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="neuroedge-rows")
        self._busy: set[tuple[int, int, int]] = set()  # (layer id, slice, rows version) being computed
        self._computed.connect(self._store)

    def later(self, membranes: Any) -> Callable[[list[int]], None]:
        """The ``later`` callback of :func:`~.training_data.viewer_summary` for ``membranes``."""
        ref = weakref.ref(membranes)
        return lambda slices: self.request(ref, slices)

    def request(self, ref: Any, slices: list[int]) -> None:
        """Compute the rows of ``slices`` of the layer ``ref()`` (each once per rows version)."""
        lay = ref()
        if lay is None:
            return
        version = tracking.rows_version(lay)
        for z in slices:
            key = (id(lay), int(z), version)
            if key not in self._busy:
                self._busy.add(key)
                self._pool.submit(self._compute, ref, int(z), version, key)

    def _compute(self, ref: Any, z: int, version: int, key: tuple[int, int, int]) -> None:  # (the thread)
        lower_thread_priority()
        lay, viewer, keyed = ref(), self._viewer_ref(), None
        try:
            if lay is not None and viewer is not None:
                keyed = compute_row(viewer, lay, z)
        except Exception as exc:  # a layer removed or reshaped meanwhile: the next summary says why
            log.info("summary row of slice %s not computed: %s", z, exc)
        try:
            self._computed.emit((ref, z, version, key, keyed))
        except RuntimeError:  # the filler was deleted with its session
            pass

    def _store(self, payload: tuple[Any, int, int, tuple[int, int, int], Any]) -> None:
        ref, z, version, key, keyed = payload
        self._busy.discard(key)
        lay = ref()
        if lay is not None and keyed is not None and store_row(lay, z, keyed, version):
            self.ready.emit()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


_FILLERS: weakref.WeakKeyDictionary[Any, RowFiller] = weakref.WeakKeyDictionary()


def row_filler(session: Any) -> RowFiller:
    """The session's :class:`RowFiller` (created on first use, closed with the viewer's window)."""
    filler = _FILLERS.get(session)
    if filler is None:
        filler = RowFiller(session.viewer)
        _FILLERS[session] = filler
        on_close = getattr(session, "on_close", None)
        if on_close is not None:
            on_close(filler.close)
    return filler
