"""Disk-backed (zarr) output layers for stacks too large, or too lazy, to predict into memory.

The Predict widget switches to this path when the image layer's data is not an in-memory numpy array (a
memory-mapped TIFF, zarr, dask ...) or has more than :func:`lazy_voxels` voxels. Outputs then live in zarr
arrays with chunks (1, 1024, 1024) in a per-viewer temporary folder (:class:`OutputStore`, under
``$NEUROEDGE_CACHE_DIR`` or the system temp dir), which napari shows and paints directly; the folder is deleted
when the viewer's window closes (or at interpreter exit).

A prediction job writes into *staged* arrays holding only the predicted slices (:func:`predict_staged`), one
band of chunk rows at a time, so memory stays bounded by the tile, the chunk and one row of chunks, never by
the volume. The GUI thread then either adopts the staged arrays as layer data (whole volume) or copies the
staged slice into the layer chunk by chunk (:func:`copy_slices`). This module imports neither Qt nor napari.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SEED_THRESHOLD

ENV_LAZY_VOXELS = "NEUROEDGE_LAZY_VOXELS"
ENV_CACHE_DIR = "NEUROEDGE_CACHE_DIR"
LAZY_VOXELS = 256 * 2**20  # outputs of larger (in-memory) images go to zarr on disk
CHUNK = 1024  # (y, x) chunk side of the output arrays; stacks use (1, CHUNK, CHUNK)


class StoreClosedError(RuntimeError):
    """The viewer owning the output folder was closed; nothing more may be written there."""


def lazy_voxels() -> int:
    """Voxel count above which outputs go to disk: ``$NEUROEDGE_LAZY_VOXELS`` or :data:`LAZY_VOXELS`."""
    env = os.environ.get(ENV_LAZY_VOXELS, "").strip()
    if env:
        try:
            return max(0, int(float(env)))
        except ValueError:
            pass
    return LAZY_VOXELS


def is_in_memory(data: Any) -> bool:
    """True for a plain in-memory numpy array (a ``np.memmap``, zarr or dask array is not)."""
    return type(data) is np.ndarray


def wants_lazy(data: Any) -> bool:
    """Whether predictions of ``data`` ((y, x) or (z, y, x) array-like) should go to disk-backed layers."""
    voxels = int(np.prod([int(s) for s in data.shape], dtype=np.int64))
    return not is_in_memory(data) or voxels > lazy_voxels()


def chunks_for(shape: Sequence[int]) -> tuple[int, ...]:
    """Output chunks: one slice deep, at most CHUNK x CHUNK in (y, x)."""
    yx = tuple(max(1, min(int(s), CHUNK)) for s in shape[-2:])
    return (1,) * (len(shape) - 2) + yx


def cache_dir() -> Path:
    """Parent folder of the per-viewer output folders: ``$NEUROEDGE_CACHE_DIR`` or the system temp dir."""
    env = os.environ.get(ENV_CACHE_DIR, "").strip()
    if env:
        path = Path(env).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path
    return Path(tempfile.gettempdir())


def _remove_tree(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


class OutputStore:
    """A temporary folder of zarr output arrays; created on first use, deleted by :meth:`close`."""

    def __init__(self, parent: str | Path | None = None) -> None:
        self._parent = Path(parent) if parent is not None else None
        self._root: Path | None = None
        self._arrays: dict[int, tuple[Any, Path]] = {}  # id(array) -> (array, folder)
        self._lock = threading.Lock()
        self._count = 0
        self.closed = False
        self._finalizer: Any = None

    @property
    def root(self) -> Path | None:
        """The folder (None until the first array is created)."""
        return self._root

    def _ensure_root(self) -> Path:
        if self._root is None:
            parent = self._parent if self._parent is not None else cache_dir()
            parent.mkdir(parents=True, exist_ok=True)
            self._root = Path(tempfile.mkdtemp(prefix="neuroedge-layers-", dir=parent))
            self._finalizer = weakref.finalize(self, _remove_tree, self._root)  # also runs at exit
        return self._root

    def check_open(self) -> None:
        if self.closed:
            raise StoreClosedError("the viewer was closed; its temporary output folder is gone")

    def create(self, shape: Sequence[int], dtype: Any, name: str = "array") -> Any:
        """A new zero-filled zarr array (chunks :func:`chunks_for`); unwritten chunks take no disk space."""
        import zarr

        shape = tuple(int(s) for s in shape)
        with self._lock:
            self.check_open()
            root = self._ensure_root()
            self._count += 1
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "array"
            path = root / f"{self._count:04d}-{safe}.zarr"
        arr = zarr.open(str(path), mode="w-", shape=shape, chunks=chunks_for(shape), dtype=np.dtype(dtype),
                        fill_value=0)
        with self._lock:
            self._arrays[id(arr)] = (arr, path)
        return arr

    def owns(self, arr: Any) -> bool:
        return id(arr) in self._arrays and self._arrays[id(arr)][0] is arr

    def arrays(self) -> list[Any]:
        return [a for a, _ in self._arrays.values()]

    def discard(self, arr: Any) -> None:
        """Delete an array made here (no-op for anything else)."""
        with self._lock:
            entry = self._arrays.get(id(arr))
            if entry is None or entry[0] is not arr:
                return
            del self._arrays[id(arr)]
        _remove_tree(entry[1])

    def close(self) -> None:
        """Delete the folder and everything in it; later writes raise :class:`StoreClosedError`."""
        with self._lock:
            self.closed = True
            self._arrays.clear()
            root, self._root = self._root, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        _remove_tree(root)


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


# ------------------------------------------------------------------------------------------- the job side

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
    from ..io import SliceFolder

    return SliceCache(data) if isinstance(data, SliceFolder) else data


class BandSink:
    """Array-like sink for :func:`iter_predict` that writes whole rows of chunks to a zarr ``target``.

    ``iter_predict`` writes each slice top to bottom in bands of tile rows; writing those straight into zarr
    would re-encode each chunk several times. Rows are buffered (one reused buffer of one row of chunks) until a
    chunk row is complete, then written chunk by chunk, and ``also(key, block)`` is called with each written
    block and its index (e.g. to threshold membranes). A write that does not continue the buffered rows flushes
    them first, so any write order stays correct.
    """

    def __init__(self, target: Any, store: OutputStore | None = None,
                 also: Callable[[tuple[Any, ...], np.ndarray], None] | None = None) -> None:
        self.target, self.store, self.also = target, store, also
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
        if self.store is not None:
            self.store.check_open()
        width = self.shape[-1]
        for x0 in range(0, width, self.col):  # one chunk at a time keeps zarr's encode buffers small
            x1 = min(x0 + self.col, width)
            block = rows[:, x0:x1] if (x0, x1) != (0, width) else rows
            self.target[(*lead, slice(y0, y1), slice(x0, x1))] = block
            if self.also is not None:
                self.also((*lead, slice(y0, y1), slice(x0, x1)), block)

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
            if self.store is not None:
                self.store.check_open()
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


@dataclass
class Staged:
    """The arrays one job predicted: (y, x) for a 2D image, else (k, y, x) for its k slices (zarr)."""

    prob: Any
    membranes: Any
    variance: Any = None
    instances: Any = None

    def arrays(self) -> list[Any]:
        return [a for a in (self.prob, self.membranes, self.variance, self.instances) if a is not None]


def predict_staged(data: Any, slices: Sequence[int], is_2d: bool, predictor: Any, store: OutputStore, *,
                   tile: Any, norm: Any, threshold: float, variance: bool, instances: bool,
                   seed_threshold: float = SEED_THRESHOLD) -> Generator[Any, None, Staged]:
    """Generator: predict ``slices`` of ``data`` (lazy array-like, read band by band) into new staged zarr arrays.

    Yields ProgressEvents; returns :class:`Staged`. On an error or a cancel (the generator is closed) the staged
    arrays are deleted. Instance ids are unique across the stack (``stack_instance_ids``); instances need
    one whole (y, x) slice in memory, everything else one row of chunks.
    """
    from ..inference.postprocess import instance_dtype, instances_from_probability, stack_instance_ids
    from ..inference.predict import iter_predict
    from ..progress import ProgressEvent

    h, w = int(data.shape[-2]), int(data.shape[-1])
    if not is_2d and len(slices) not in (1, int(data.shape[0])):
        raise ValueError("predict either one slice or all slices")
    shape: tuple[int, ...] = (h, w) if is_2d else (len(slices), h, w)
    staged = Staged(store.create(shape, np.float32, "boundary"), store.create(shape, np.uint8, "membranes"))
    try:
        if variance:
            staged.variance = store.create(shape, np.float32, "uncertainty")
        if instances:
            staged.instances = store.create(shape, instance_dtype(tuple(data.shape)), "instances")
        mem = staged.membranes

        def membranes(key: tuple[Any, ...], block: np.ndarray) -> None:
            mem[key] = (block >= threshold).astype(np.uint8)

        sinks = [BandSink(staged.prob, store, membranes)]
        if staged.variance is not None:
            sinks.append(BandSink(staged.variance, store))
        spec = None if is_2d or len(slices) != 1 else f"{slices[0]}:{slices[0] + 1}"
        yield from iter_predict(data, predictor, sinks, tile=tile, norm=norm, slices=spec)
        for sink in sinks:
            sink.flush()
        if staged.instances is not None:
            n = 1 if is_2d else len(slices)
            for i in range(n):
                z = 0 if is_2d else int(slices[i])
                prob = np.asarray(staged.prob if is_2d else staged.prob[i], np.float32)
                cells = instances_from_probability(prob, seed_threshold)
                ids = stack_instance_ids(cells, z, tuple(data.shape))
                store.check_open()
                if is_2d:
                    staged.instances[...] = ids
                else:
                    staged.instances[i] = ids
                del prob, cells, ids
                yield ProgressEvent(i + 1, n, "instances", unit="slices")
    except BaseException:  # failed or cancelled (GeneratorExit): nothing half-done is left on disk
        discard(store, staged.arrays())
        raise
    return staged


def discard(store: OutputStore, arrays: Iterable[Any]) -> None:
    for arr in arrays:
        if arr is not None:
            store.discard(arr)


# ------------------------------------------------------------------------------------------- the GUI side

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
