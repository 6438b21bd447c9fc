"""Disk-backed working outputs for images too large, or too lazy, to predict into memory.

The Predict widget switches to these when the image is not an in-memory numpy array (a memory-mapped TIFF, zarr,
dask ...) or has more than :func:`lazy_voxels` voxels. Each output is an OME-Zarr (NGFF) image
(``NNNN-name.ome.zarr``: one full-resolution level ``0`` with chunks (1, 1024, 1024), (1, 512, 512) for the label
outputs the user paints (:func:`~.chunks.paint_chunks`), axes z/y/x or y/x and the image's voxel size as the
scale; label outputs carry ``image-label`` metadata; image outputs made with ``pyramid`` also carry mean-downsampled
levels ``1``, ``2`` ... so a viewer reads only the level it shows) in a temporary folder
(:class:`OutputStore`, under ``$NEUROEDGE_CACHE_DIR`` or the system temp dir), created atomically (under a
temporary name, then renamed) so the folder never holds a half-made array. ome-zarr readers, napari-ome-zarr
and :func:`napari_neuroedge.io.stacks.open_stack` read them back with their axes and scale. Label outputs have no
pyramid: the user paints them in place, which would leave lower levels stale (and napari paints no multiscale
labels); whoever writes a pyramid's level 0 updates its levels (:func:`~.ngff.fill_levels`).

:func:`~napari_neuroedge.inference.staged.iter_staged` predicts into new arrays of a store.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_dir
from .chunks import chunks_for, paint_chunks
from .ngff import create_levels, level_shapes, write_metadata

ENV_LAZY_VOXELS = "NEUROEDGE_LAZY_VOXELS"
ENV_CACHE_DIR = "NEUROEDGE_CACHE_DIR"
LAZY_VOXELS = 256 * 2**20  # outputs of larger (in-memory) images go to disk


class StoreClosedError(RuntimeError):
    """The owner of the output folder (a viewer) was closed; nothing more may be written there."""


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


def is_large(shape: Sequence[int], dtype: Any = np.float32) -> bool:
    """The one size policy for images and layers: an array of ``shape``/``dtype`` is too large to hold in memory
    when it takes more bytes than :func:`lazy_voxels` float32 voxels (1 GiB by default). The Predict widget then
    predicts into disk-backed outputs (:func:`wants_lazy`), and the viewer's blank label layers are sparse."""
    nbytes = int(np.prod([int(s) for s in shape], dtype=np.int64)) * np.dtype(dtype).itemsize
    return nbytes > lazy_voxels() * np.dtype(np.float32).itemsize


def wants_lazy(data: Any) -> bool:
    """Whether predictions of ``data`` ((y, x) or (z, y, x) array-like) should go to disk-backed outputs: it is
    not in memory, or its float32 probability :func:`is_large`."""
    return not is_in_memory(data) or is_large(data.shape, np.float32)


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
    """A temporary folder of OME-Zarr working arrays; created on first use, deleted by :meth:`close`."""

    def __init__(self, parent: str | Path | None = None) -> None:
        self._parent = Path(parent) if parent is not None else None
        self._root: Path | None = None
        self._arrays: dict[int, tuple[Any, Path]] = {}  # id(array) -> (array, folder)
        self._levels: dict[int, list[Any]] = {}  # id(level 0) -> the levels of its pyramid, itself first
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

    def create(self, shape: Sequence[int], dtype: Any, name: str = "array",
               voxel_size: Sequence[float] | None = None, label: bool | None = None, pyramid: bool = False) -> Any:
        """A new zero-filled array: level 0 of a new OME-Zarr image (chunks :func:`chunks_for`, for a label image
        :func:`paint_chunks`; unwritten chunks take no disk space). ``voxel_size`` (nm per axis, or per y/x) becomes
        the NGFF scale; ``label`` (default: an integer dtype) marks it an NGFF label image. ``pyramid``: also
        levels down to :data:`~.ngff.MIN_LEVEL_SIZE` px (zero; :meth:`levels_of` lists them)."""
        import zarr

        shape = tuple(int(s) for s in shape)
        dtype = np.dtype(dtype)
        label = np.issubdtype(dtype, np.integer) if label is None else label
        with self._lock:
            self.check_open()
            root = self._ensure_root()
            self._count += 1
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "array"
            path = root / f"{self._count:04d}-{safe}.ome.zarr"
        with atomic_dir(path) as tmp:
            group = zarr.open_group(str(tmp), mode="w-")
            chunks = paint_chunks(shape) if label else chunks_for(shape)
            group.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
            shapes = level_shapes(shape) if pyramid else [shape]
            create_levels(group, shapes, chunks, dtype)
            write_metadata(group, len(shapes), len(shape), tuple(voxel_size) if voxel_size else None, safe,
                           label=label)
        group = zarr.open_group(str(path), mode="r+")
        levels = [group[str(i)] for i in range(len(shapes))]
        with self._lock:
            self._arrays[id(levels[0])] = (levels[0], path)
            self._levels[id(levels[0])] = levels
        return levels[0]

    def levels_of(self, arr: Any) -> list[Any]:
        """The pyramid of an array made here: [``arr``, level 1, ...] (just [``arr``] without one, or for an array
        made elsewhere)."""
        return self._levels.get(id(arr), [arr]) if self.owns(arr) else [arr]

    def owns(self, arr: Any) -> bool:
        return id(arr) in self._arrays and self._arrays[id(arr)][0] is arr

    def path_of(self, arr: Any) -> Path | None:
        """The OME-Zarr folder of an array made here (None for anything else)."""
        entry = self._arrays.get(id(arr))
        return entry[1] if entry is not None and entry[0] is arr else None

    def arrays(self) -> list[Any]:
        return [a for a, _ in self._arrays.values()]

    def discard(self, arr: Any) -> None:
        """Delete an array made here (no-op for anything else)."""
        with self._lock:
            entry = self._arrays.get(id(arr))
            if entry is None or entry[0] is not arr:
                return
            del self._arrays[id(arr)]
            self._levels.pop(id(arr), None)
        _remove_tree(entry[1])

    def close(self) -> None:
        """Delete the folder and everything in it; later writes raise :class:`StoreClosedError`."""
        with self._lock:
            self.closed = True
            self._arrays.clear()
            self._levels.clear()
            root, self._root = self._root, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        _remove_tree(root)


def discard(store: OutputStore, arrays: Iterable[Any]) -> None:
    """Delete each of ``arrays`` made by ``store`` (None and foreign arrays are skipped)."""
    for arr in arrays:
        if arr is not None:
            store.discard(arr)
