"""The viewer's disk-backed output layers: one :class:`~napari_neuroedge.workstore.OutputStore` per widget session.

The store itself, the decision when outputs go to disk and the staged prediction live in the Qt-free core
(:mod:`napari_neuroedge.workstore`, :mod:`napari_neuroedge.inference.sinks`); they are re-exported here for the
widgets. What is left is the GUI glue: :func:`store_for` ties a store to a session and deletes its folder when
the viewer's window closes (or at interpreter exit). This module imports neither Qt nor napari.
"""

from __future__ import annotations

import weakref
from typing import Any

from ..inference.sinks import CHUNK, BandSink, SliceCache, chunks_for, copy_slices, readable
from ..workstore import (ENV_CACHE_DIR, ENV_LAZY_VOXELS, LAZY_VOXELS, OutputStore, Staged, StoreClosedError,
                         cache_dir, discard, is_in_memory, lazy_voxels, wants_lazy)

__all__ = ["CHUNK", "ENV_CACHE_DIR", "ENV_LAZY_VOXELS", "LAZY_VOXELS", "BandSink", "OutputStore", "SliceCache",
           "Staged", "StoreClosedError", "cache_dir", "chunks_for", "copy_slices", "discard", "is_in_memory",
           "lazy_voxels", "readable", "store_for", "wants_lazy"]

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
