"""The viewer's disk-backed output layers: one :class:`~napari_neuroedge.io.workstore.OutputStore` per widget session.

The store itself, the decision when outputs go to disk and the staged prediction live in the Qt-free core
(:mod:`napari_neuroedge.io.workstore`, :mod:`napari_neuroedge.inference.sinks`). This is the GUI glue only:
:func:`store_for` ties a store to a session and deletes its folder when the viewer's window closes (or at
interpreter exit). This module imports neither Qt nor napari.
"""

from __future__ import annotations

import weakref
from typing import Any

from ..io.workstore import OutputStore

__all__ = ["store_for"]

_STORES: weakref.WeakKeyDictionary[Any, OutputStore] = weakref.WeakKeyDictionary()


def store_for(session: Any) -> OutputStore:
    """The :class:`OutputStore` of a widget session (one per viewer), closed when the viewer's window goes."""
    store = _STORES.get(session)
    if store is None:
        store = OutputStore()
        _STORES[session] = store
        on_close = getattr(session, "on_close", None)
        if on_close is not None:
            on_close(store.close)  # runs after the session stopped its jobs, when the window goes
        weakref.finalize(session, store.close)
    return store
