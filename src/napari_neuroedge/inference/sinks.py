"""Array-like sinks and sources for the prediction pipeline (numpy only).

:func:`~napari_neuroedge.inference.predict.iter_predict` writes each output channel of a slice top to bottom in
bands of whole rows (``sink[k, y0:y1, :] = rows``). These adapters sit between it and the real outputs:
:class:`ThresholdSink` turns the probability into uint8 membranes, :class:`Tee` sends one band to several
sinks, and :class:`BandSink` buffers rows until a whole row of chunks of a zarr array is complete, so each chunk
is encoded once. :class:`SliceCache` lets sources that can only read whole slices (a folder of 2D files) be read
tile by tile; :func:`copy_slices` copies slices between chunked arrays chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ..io.chunks import CHUNK, chunks_for  # noqa: F401  (chunks_for: still importable from the sinks)
from ..io.stacks import SliceFolder

def is_chunked(target: Any) -> bool:
    """True for a chunked array (zarr) that should be written a row of chunks at a time; False for numpy and
    memory-mapped arrays, which take any write cheaply."""
    chunks = getattr(target, "chunks", None)
    return not isinstance(target, np.ndarray) and isinstance(chunks, tuple) and len(chunks) == len(target.shape)


class ThresholdSink:
    """Array-like sink storing ``block >= threshold`` as uint8 (1 = membrane) into another array-like."""

    def __init__(self, target: Any, threshold: float) -> None:
        self.target, self.threshold = target, float(threshold)
        self.dtype = np.dtype(np.float32)
        self.shape = tuple(target.shape)

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        self.target[key] = (np.asarray(value) >= self.threshold).astype(np.uint8)


class Tee:
    """Array-like sink forwarding every write to several sinks (all of one shape)."""

    def __init__(self, *sinks: Any) -> None:
        if not sinks:
            raise ValueError("Tee needs at least one sink")
        self.sinks = sinks
        self.dtype = np.dtype(np.float32)
        self.shape = tuple(sinks[0].shape)

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        for s in self.sinks:
            s[key] = value


class BandSink:
    """Array-like sink that writes whole rows of chunks to a chunked (zarr) ``target``.

    Rows are buffered (one reused buffer of one row of chunks) until a chunk row is complete, then written chunk
    by chunk; ``check()`` runs before every write (e.g. to refuse writing into a deleted folder). A write that does
    not continue the buffered rows flushes them first, so any write order stays correct. Call :meth:`flush` at the
    end.
    """

    def __init__(self, target: Any, check: Callable[[], None] | None = None) -> None:
        self.target, self.check = target, check
        self.shape = tuple(int(s) for s in target.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(target.dtype)
        chunks = getattr(target, "chunks", None)
        band = int(chunks[-2]) if isinstance(chunks, tuple) and len(chunks) == self.ndim else CHUNK
        self.band = max(1, min(band, self.shape[-2]))
        col = int(chunks[-1]) if isinstance(chunks, tuple) and len(chunks) == self.ndim else CHUNK
        self.col = max(1, min(col, self.shape[-1]))
        self._buf: np.ndarray | None = None
        self._lead: tuple[int, ...] | None = None
        self._y0 = self._y1 = 0  # rows [y0, y1) of slice ``lead`` are in _buf[: y1 - y0]

    def _write(self, lead: tuple[int, ...], y0: int, y1: int, rows: np.ndarray) -> None:
        if self.check is not None:
            self.check()
        width = self.shape[-1]
        for x0 in range(0, width, self.col):  # one chunk at a time keeps zarr's encode buffers small
            x1 = min(x0 + self.col, width)
            block = rows[:, x0:x1] if (x0, x1) != (0, width) else rows
            self.target[(*lead, slice(y0, y1), slice(x0, x1))] = block

    def flush(self) -> None:
        """Write whatever rows are buffered."""
        if self._lead is not None and self._y1 > self._y0 and self._buf is not None:
            self._write(self._lead, self._y0, self._y1, self._buf[: self._y1 - self._y0])
        self._lead = None
        self._y0 = self._y1 = 0

    def __setitem__(self, key: Any, value: Any) -> None:
        key = key if isinstance(key, tuple) else (key,)
        plain = (len(key) == self.ndim and isinstance(key[-2], slice) and key[-2].step in (None, 1)
                 and key[-1] == slice(None) and all(isinstance(i, (int, np.integer)) for i in key[:-2]))
        if not plain:  # not a band of whole rows: write through
            self.flush()
            if self.check is not None:
                self.check()
            self.target[key] = value
            return
        height, width = self.shape[-2], self.shape[-1]
        y0, y1, _ = key[-2].indices(height)
        rows = np.broadcast_to(np.asarray(value, dtype=self.dtype), (max(y1 - y0, 0), width))
        lead = tuple(int(i) for i in key[:-2])
        if self._lead is not None and (lead != self._lead or y0 != self._y1):
            self.flush()
        if self._buf is None:
            self._buf = np.empty((self.band, width), self.dtype)
        while rows.shape[0]:
            if self._lead is None:
                self._lead, self._y0, self._y1 = lead, y0, y0
            cut = min(height, (self._y0 // self.band + 1) * self.band)  # end of the chunk row holding y0
            n = min(rows.shape[0], cut - self._y1)
            at = self._y1 - self._y0
            self._buf[at:at + n] = rows[:n]
            self._y1 += n
            y0 += n
            rows = rows[n:]
            if self._y1 >= cut:
                self.flush()


class SliceCache:
    """Read-only (z, y, x) view of an array-like that loads whole slices only (e.g. a folder of 2D files, which
    cannot read part of a slice) and keeps the last one, so tile windows do not re-read the file. Memory: one
    input slice."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.shape = tuple(int(s) for s in data.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(data.dtype)
        self._z: int | None = None
        self._plane: np.ndarray | None = None

    def _slice(self, z: int) -> np.ndarray:
        if z != self._z or self._plane is None:
            self._plane, self._z = None, None  # drop the old slice before reading the next
            self._plane, self._z = np.asarray(self.data[z]), z
        return self._plane

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if self.ndim == 3 and key and isinstance(key[0], (int, np.integer)):
            z = int(key[0]) + (self.shape[0] if int(key[0]) < 0 else 0)
            plane = self._slice(z)
            return plane[key[1:]] if len(key) > 1 else plane
        return np.asarray(self.data[key])


def readable(data: Any) -> Any:
    """``data`` itself, or a :class:`SliceCache` over it when it can only read whole slices (a slice folder)."""
    return SliceCache(data) if isinstance(data, SliceFolder) else data


def copy_slices(src: Any, dst: Any, pairs: Iterable[tuple[int | None, int | None]]) -> None:
    """Copy (y, x) slices ``src[k] -> dst[z]`` for each ``(k, z)`` (None: the array is 2D), chunk by chunk.

    Memory: one (y, x) chunk of ``dst`` (or of :data:`CHUNK` px), whatever the slice size.
    """
    chunks = getattr(dst, "chunks", None)
    cy, cx = (int(chunks[-2]), int(chunks[-1])) if isinstance(chunks, tuple) and len(chunks) >= 2 else (CHUNK, CHUNK)
    h, w = int(dst.shape[-2]), int(dst.shape[-1])
    for k, z in pairs:
        for y0 in range(0, h, cy):
            for x0 in range(0, w, cx):
                ys, xs = slice(y0, min(y0 + cy, h)), slice(x0, min(x0 + cx, w))
                block = np.asarray(src[ys, xs] if k is None else src[k, ys, xs])
                if z is None:
                    dst[ys, xs] = block
                else:
                    dst[z, ys, xs] = block
