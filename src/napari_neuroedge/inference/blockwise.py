"""Blockwise prediction with Dask: the same overlap-tile inference, split into independent tasks over blocks.

A *block* is a box of output voxels (whole slices in z, a rectangle in y/x) made of whole output zarr chunks.
Each block task reads the input window its tiles need (the block plus a tile-aligned halo, mirror-indexed at
the image border), runs the tiles of the **global** tile grid that intersect the block (the very grid that
:func:`~napari_neuroedge.inference.predict.iter_predict` uses, in the same row-major order), blends them with
the same window and writes the finished block into the output zarr array in one go. Because every output
pixel sees the same tiles, the same weights, the same summation order and the same per-slice normalisation
(computed once per slice, up front, from the whole slice), the result equals the single-process run: bit for
bit when blocks span whole slice widths (the batches are then the same too) or the predictor's output per
tile does not depend on the rest of its batch; otherwise within float round-off (~1e-7) for torch models,
whose kernels can vary with the batch size. The price is that tiles straddling a block border are run by both
blocks: about ``(B + t) / B`` per split axis for blocks of B px and tiles of t px (none when blocks are whole
slices, the default up to 4096 px).

Fault tolerance: a finished block is written with the zarr array API (each chunk file is replaced atomically
by the store) and only then marked done by a file in ``.NAME.blockwise/done/``. A rerun with the same settings
computes only the blocks without a marker; when all are done the array is moved to its final name and the
work folder removed. Each worker process loads the model once (a per-process cache keyed by checkpoint hash,
device and settings). Multi-GPU: :func:`local_cluster` with ``devices=["cuda:0", "cuda:1", ...]`` starts one
worker process per device with ``CUDA_VISIBLE_DEVICES`` set for it.

Schedulers: ``"threads"`` (dask's threaded scheduler, in this process), ``"sync"``, ``"local"`` (a
:func:`local_cluster` started for the run), a scheduler address (``tcp://host:8786``) or a
``distributed.Client``. Dask is an optional dependency (``pip install napari-neuroedge[dask]``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..atomic import OutputExistsError, atomic_write_bytes
from ..config import NormConfig, TileConfig, TTAConfig, to_dict
from ..progress import Cancelled, Progress, ProgressEvent, drive
from .normalize import apply_stats, slice_stats
from .predict import Predictor, parse_slices
from .tiling import DEFAULT_CONTEXT, PlaneView, TileGrid, blend_window, make_grid, read_window

DEVICE_ENV = "NEUROEDGE_DEVICE"  # set per worker by local_cluster(devices=...); read when device is "auto"
WORK_SUFFIX = ".blockwise"
DEFAULT_CHUNK = 1024  # px, output zarr chunk side in y/x
DEFAULT_BLOCK = 4096  # px, largest task block side in y/x before a slice is split


def _require_dask() -> None:
    try:
        import dask  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("blockwise prediction needs dask: pip install 'napari-neuroedge[dask]'") from None


# ------------------------------------------------------------------------------------------ predictor sources

@runtime_checkable
class PredictorSource(Protocol):
    """Something a worker can turn into a predictor, once per process.

    ``key()`` is a JSON-able value naming the predictor and its settings (the per-process cache key, also
    stored with a resumable job so a rerun with other settings is refused); ``load()`` builds the predictor;
    ``describe()`` gives ``{"multiple": int, "out_channels": int}`` and optionally ``"norm"`` (NormConfig).
    """

    def key(self) -> Any: ...

    def load(self) -> Predictor: ...

    def describe(self) -> dict[str, Any]: ...


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def worker_device(device: str = "auto") -> str:
    """The torch device for this process: ``auto`` -> ``$NEUROEDGE_DEVICE`` if set, else the best available."""
    if (device or "auto").lower() == "auto":
        env = os.environ.get(DEVICE_ENV, "").strip()
        if env:
            return env
        from .device import resolve_device

        return str(resolve_device("auto"))
    return device


@dataclass(frozen=True)
class ModelSpec:
    """A checkpoint plus inference settings, small enough to send to every worker.

    ``checkpoint`` is a bundled name ("default") or a path readable by the workers; ``device`` is "auto"
    (the worker's assigned device, see :func:`local_cluster`), "cpu", "cuda", "cuda:1", ...; ``threads`` > 0
    sets torch's intra-op threads in the worker process. :meth:`resolved` (called for you by the blockwise
    functions) records the file's sha256, so a worker with another file and a rerun with another model are
    refused.
    """

    checkpoint: str
    device: str = "auto"
    precision: str = "auto"
    tta: TTAConfig = field(default_factory=TTAConfig)
    threads: int = 0
    sha256: str = ""

    def resolved(self) -> ModelSpec:
        """With the checkpoint's sha256 filled in and a path made absolute (bundled names stay names, so
        workers with the package installed elsewhere find their own copy)."""
        from ..models.registry import bundled_models, resolve_checkpoint

        path = resolve_checkpoint(self.checkpoint).resolve()
        name = self.checkpoint if self.checkpoint in bundled_models() else str(path)
        return replace(self, checkpoint=name, sha256=self.sha256 or _sha256(path))

    def key(self) -> Any:
        return ["torch-checkpoint", self.checkpoint, self.sha256, self.device, self.precision, to_dict(self.tta)]

    def load(self) -> Predictor:
        """The TorchPredictor on this process's device; refuses a checkpoint whose hash differs from the client's."""
        from ..models.checkpoint import load_checkpoint
        from ..models.registry import resolve_checkpoint
        from .predict import TorchPredictor

        if self.sha256:
            found = _sha256(resolve_checkpoint(self.checkpoint))
            if found != self.sha256:
                raise ValueError(f"{self.checkpoint}: this worker's checkpoint (sha256 {found[:12]}) differs from "
                                 f"the client's ({self.sha256[:12]}); give every worker the same file")
        if self.threads > 0:
            import torch

            torch.set_num_threads(self.threads)
        model = load_checkpoint(self.checkpoint).build()
        return TorchPredictor(model, worker_device(self.device), tta=self.tta, precision=self.precision)

    def describe(self) -> dict[str, Any]:
        from ..models.checkpoint import load_checkpoint

        ckpt = load_checkpoint(self.checkpoint)
        model = ckpt.build()
        return {"multiple": int(getattr(model, "multiple", 1)), "context": ckpt.context,
                "out_channels": 2 if (self.tta.n > 1 and self.tta.variance) else 1, "norm": ckpt.norm}


class InProcessSource:
    """Wraps a ready predictor (for the threaded scheduler, lazy napari layers and tests).

    With a distributed cluster the predictor is pickled to every worker; prefer :class:`ModelSpec` there.
    """

    def __init__(self, predictor: Predictor, name: str | None = None) -> None:
        self.predictor = predictor
        self.name = name or f"in-process-{type(predictor).__name__}-{id(predictor)}"

    def key(self) -> Any:
        return ["in-process", self.name]

    def load(self) -> Predictor:
        return self.predictor

    def describe(self) -> dict[str, Any]:
        return {"multiple": int(getattr(self.predictor, "multiple", 1)),
                "context": int(getattr(self.predictor, "context", 0)),
                "out_channels": int(getattr(self.predictor, "out_channels", 1))}


def as_source(model: Any, device: str = "auto", precision: str = "auto", tta: TTAConfig | None = None,
              threads: int = 0) -> PredictorSource:
    """A :class:`PredictorSource` for a source, a checkpoint name/path (-> ModelSpec with these settings) or a
    predictor callable (-> :class:`InProcessSource`); the settings apply only to a name/path."""
    if isinstance(model, PredictorSource):
        return model
    if isinstance(model, (str, Path)):
        return ModelSpec(str(model), device=device, precision=precision, tta=tta or TTAConfig(), threads=threads)
    if callable(model):
        return InProcessSource(model)
    raise TypeError(f"expected a checkpoint name/path, a ModelSpec or a predictor, got {type(model).__name__}")


_CACHE_LOCK = threading.Lock()
_PREDICTORS: dict[str, Predictor] = {}
_LOADS: list[str] = []  # keys loaded by this process, in order (see load_count)


def cached_predictor(source: PredictorSource) -> Predictor:
    """The predictor for ``source``, loaded at most once per process (thread-safe).

    An :class:`InProcessSource` is returned as is (not cached, so it is freed with its owner).
    """
    if isinstance(source, InProcessSource):
        return source.predictor
    key = json.dumps(source.key(), sort_keys=True, default=str)
    with _CACHE_LOCK:
        pred = _PREDICTORS.get(key)
        if pred is None:
            pred = source.load()
            _PREDICTORS[key] = pred
            _LOADS.append(key)
        return pred


def load_count() -> int:
    """How many predictors this process has loaded (one per distinct source; for tests and benchmarks)."""
    return len(_LOADS)


def clear_predictor_cache() -> None:
    """Forget this process's cached predictors (frees their memory)."""
    with _CACHE_LOCK:
        _PREDICTORS.clear()


# ------------------------------------------------------------------------------------------- volume references

@dataclass(frozen=True)
class VolumeRef:
    """A picklable handle on an input volume: a path (reopened lazily per process), a raw memmap or an array."""

    path: str | None = None
    memmap: tuple[str, int, str, tuple[int, ...]] | None = None  # (file, offset, dtype, shape)
    array: Any = None

    def open(self) -> Any:
        """The array (opened once per process and kept in a small cache, keyed by file and mtime)."""
        if self.array is not None:
            return self.array
        fname = self.path if self.path is not None else self.memmap[0]  # type: ignore[index]
        try:
            stamp = os.stat(fname).st_mtime_ns
        except OSError:
            stamp = 0
        key = json.dumps([self.path, self.memmap, stamp])
        with _CACHE_LOCK:
            data = _VOLUMES.pop(key, None)
            if data is not None:
                _VOLUMES[key] = data  # most recently used last
                return data
        if self.path is not None:
            from ..io import open_stack

            data = open_stack(self.path).data
        else:
            fname, offset, dtype, shape = self.memmap  # type: ignore[misc]
            data = np.memmap(fname, dtype=np.dtype(dtype), mode="r", offset=offset, shape=tuple(shape))
        with _CACHE_LOCK:
            data = _VOLUMES.setdefault(key, data)
            while len(_VOLUMES) > _MAX_OPEN:
                _VOLUMES.pop(next(iter(_VOLUMES)))
        return data

    def describe(self) -> str:
        """A stable description (path, memmap file, zarr store or a hash of a strided sample of an array)."""
        if self.path is not None:
            return str(self.path)
        if self.memmap is not None:
            return f"memmap:{self.memmap[0]}@{self.memmap[1]}"
        store = getattr(self.array, "store_path", None) or getattr(self.array, "store", None)
        if store is not None and not isinstance(self.array, np.ndarray):
            return f"{type(self.array).__name__}:{store}"
        arr = self.array
        step = max(1, int((int(np.prod(arr.shape)) / 2**20) ** (1 / max(arr.ndim, 1))))
        sample = np.ascontiguousarray(np.asarray(arr[(slice(None, None, step),) * arr.ndim]))
        return f"array:{type(arr).__name__}:{hashlib.sha256(sample.tobytes()).hexdigest()[:16]}"


_VOLUMES: dict[str, Any] = {}
_MAX_OPEN = 4  # volumes kept open per process


def volume_ref(volume: Any) -> VolumeRef:
    """Wrap a path or array-like; a whole-file np.memmap becomes (file, offset) so workers map it themselves."""
    import mmap

    if isinstance(volume, (str, Path)):
        return VolumeRef(path=str(Path(volume).resolve()))
    if (isinstance(volume, np.memmap) and getattr(volume, "filename", None) and isinstance(volume.base, mmap.mmap)
            and volume.flags.c_contiguous):
        return VolumeRef(memmap=(str(volume.filename), int(volume.offset), volume.dtype.str,
                                 tuple(int(s) for s in volume.shape)))
    return VolumeRef(array=volume)


# ---------------------------------------------------------------------------------------------- block geometry

@dataclass(frozen=True)
class Block:
    """Output voxels [z0, z1) x [y0, y1) x [x0, x1) (z counts output slices; 0:1 for a 2D image)."""

    z0: int
    z1: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def name(self) -> str:
        return f"z{self.z0}_y{self.y0}_x{self.x0}"

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.z1 - self.z0, self.y1 - self.y0, self.x1 - self.x0)


def default_chunks(shape: Sequence[int], chunk: int = DEFAULT_CHUNK) -> tuple[int, ...]:
    """Output zarr chunks: one slice deep, ``chunk`` px (or the whole extent) in y and x."""
    return (1,) * (len(shape) - 2) + tuple(min(int(s), chunk) for s in shape[-2:])


def default_block(shape: Sequence[int], chunks: Sequence[int], target: int = DEFAULT_BLOCK) -> tuple[int, ...]:
    """Task blocks: one chunk deep; whole slices when a side is at most ``target`` px, else the largest
    multiple of the chunk that fits in ``target`` (at least one chunk)."""
    out = [int(c) for c in chunks[:-2]]
    for s, c in zip(shape[-2:], chunks[-2:]):
        s, c = int(s), int(c)
        out.append(s if s <= target else max(c, (target // c) * c))
    return tuple(out)


def plan_blocks(shape: Sequence[int], block: Sequence[int]) -> list[Block]:
    """All blocks of ``block`` size tiling an output of ``shape`` ((y, x) or (z, y, x)), z-major."""
    shape3 = (1, *shape) if len(shape) == 2 else tuple(shape)
    block3 = (1, *block) if len(block) == 2 else tuple(block)
    Z, Y, X = (int(s) for s in shape3)
    bz, by, bx = (int(b) for b in block3)
    if min(bz, by, bx) < 1:
        raise ValueError(f"block sizes must be positive, got {tuple(block)}")
    return [Block(z, min(z + bz, Z), y, min(y + by, Y), x, min(x + bx, X))
            for z in range(0, Z, bz) for y in range(0, Y, by) for x in range(0, X, bx)]


def _check_block(shape: Sequence[int], chunks: Sequence[int], block: Sequence[int]) -> None:
    if len(chunks) != len(shape) or len(block) != len(shape):
        raise ValueError(f"chunks {tuple(chunks)} and block {tuple(block)} must have one entry per axis of "
                         f"{tuple(shape)}")
    for s, c, b in zip(shape, chunks, block):
        if c < 1 or b < 1:
            raise ValueError(f"chunks {tuple(chunks)} and block {tuple(block)} must be positive")
        if b < s and b % c:
            raise ValueError(f"block {tuple(block)} must be a multiple of the output chunks {tuple(chunks)} (or "
                             f"cover the whole axis) so each chunk is written by exactly one task")


def tiles_in_range(starts: Sequence[int], tile: int, lo: int, hi: int) -> list[int]:
    """The tile starts (of tiles ``tile`` px long) whose tile intersects [lo, hi)."""
    return [s for s in starts if s < hi and s + tile > lo]


def block_tiles(grid: TileGrid, block: Block) -> list[tuple[int, int]]:
    """Tiles (y, x) of the global ``grid`` touching ``block`` in y/x, in the single-process (row-major) order."""
    ys = tiles_in_range(grid.ys, grid.tile, block.y0, block.y1)
    xs = tiles_in_range(grid.xs, grid.tile, block.x0, block.x1)
    return [(y, x) for y in ys for x in xs]


def predict_plane_block(plane: Any, predictor: Predictor, grid: TileGrid, window: np.ndarray, batch: int,
                        stats: tuple[float, float], y0: int, y1: int, x0: int, x1: int, n_out: int) -> np.ndarray:
    """Rows [y0, y1) x cols [x0, x1) of one slice's stitched prediction: float32 (n_out, y1-y0, x1-x0).

    Reads one input window (the union of the intersecting tiles, mirror-indexed outside the image),
    normalises it with the slice's ``stats`` and blends the tiles exactly as the single-process path does
    (same tiles, same order, same batches along each tile row).
    """
    t = grid.tile
    ys = tiles_in_range(grid.ys, t, y0, y1)
    xs = tiles_in_range(grid.xs, t, x0, x1)
    ry0, rx0 = ys[0], xs[0]
    region = apply_stats(read_window(plane, ry0, rx0, ys[-1] + t - ry0, xs[-1] + t - rx0), stats)
    acc = np.zeros((n_out, y1 - y0, x1 - x0), np.float32)
    wsum = np.zeros((y1 - y0, x1 - x0), np.float32)
    # batches per tile row, as in the single-process run: whole-width blocks then feed identical batches
    batches = [[(ty, tx) for tx in xs[b0:b0 + batch]] for ty in ys for b0 in range(0, len(xs), batch)]
    for chunk in batches:
        arr = np.stack([region[ty - ry0:ty - ry0 + t, tx - rx0:tx - rx0 + t] for ty, tx in chunk])[:, None]
        out = np.asarray(predictor(arr), dtype=np.float32)
        if out.ndim != 4 or out.shape[0] != len(chunk) or out.shape[-2:] != (t, t) or out.shape[1] < n_out:
            raise ValueError(f"predictor returned shape {out.shape} for a batch of {arr.shape}; expected "
                             f"({len(chunk)}, >={n_out}, {t}, {t})")
        for (ty, tx), res in zip(chunk, out):
            a0, a1 = max(ty, y0), min(ty + t, y1)
            c0, c1 = max(tx, x0), min(tx + t, x1)
            win = window[a0 - ty:a1 - ty, c0 - tx:c1 - tx]
            acc[:, a0 - y0:a1 - y0, c0 - x0:c1 - x0] += res[:n_out, a0 - ty:a1 - ty, c0 - tx:c1 - tx] * win
            wsum[a0 - y0:a1 - y0, c0 - x0:c1 - x0] += win
    return acc / wsum[None]


# ------------------------------------------------------------------------------------------------ shared plan

@dataclass
class _Plan:
    """Everything a block task needs; built on the client, shipped once per worker."""

    volume: VolumeRef
    source: PredictorSource
    zs: tuple[int | None, ...]  # input slice per output slice (None: 2D image)
    tile: TileConfig
    norm: NormConfig
    multiple: int
    n_out: int
    outputs: tuple[str, ...] = ()  # zarr arrays, one per channel (resumable jobs)
    done_dir: str = ""

    def grid(self, shape: Sequence[int]) -> TileGrid:
        return make_grid(int(shape[-2]), int(shape[-1]), self.tile.tile, self.tile.context, self.multiple)


def _slice_stats_task(plan: _Plan, k: int) -> tuple[float, float]:
    vol = plan.volume.open()
    return slice_stats(PlaneView(vol, plan.zs[k]), plan.norm)


def compute_block(plan: _Plan, block: Block, stats: Sequence[tuple[float, float]]) -> np.ndarray:
    """Predict one block: float32 (n_out, bz, by, bx); ``stats[i]`` are output slice (block.z0 + i)'s stats."""
    vol = plan.volume.open()
    predictor = cached_predictor(plan.source)
    grid = plan.grid(vol.shape)
    window = blend_window(grid.tile, plan.tile.blend, grid.context)
    out = np.empty((plan.n_out, *block.shape), np.float32)
    for i, k in enumerate(range(block.z0, block.z1)):
        plane = PlaneView(vol, plan.zs[k])
        out[:, i] = predict_plane_block(plane, predictor, grid, window, plan.tile.batch, stats[i],
                                        block.y0, block.y1, block.x0, block.x1, plan.n_out)
    return out


def _block_write_task(plan: _Plan, block: Block, cancel: Any, *stats: tuple[float, float]) -> dict[str, Any]:
    """Compute ``block``, write it to every output, then drop its done-marker; returns timing info."""
    import zarr

    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled by the user")
    t0 = time.perf_counter()
    data = compute_block(plan, block, stats)
    for c, path in enumerate(plan.outputs):
        arr = zarr.open(path, mode="r+")
        sel = (slice(block.z0, block.z1),) if arr.ndim == 3 else ()
        vals = data[c] if arr.ndim == 3 else data[c, 0]
        arr[(*sel, slice(block.y0, block.y1), slice(block.x0, block.x1))] = vals
    grid = plan.grid(plan.volume.open().shape)
    info = {"block": block.name, "tiles": len(block_tiles(grid, block)) * (block.z1 - block.z0),
            "seconds": time.perf_counter() - t0, "pid": os.getpid()}
    with contextlib.suppress(OutputExistsError):  # a task run twice (e.g. after a lost worker) is harmless
        atomic_write_bytes(Path(plan.done_dir) / block.name, json.dumps(info).encode())
    return info


# ------------------------------------------------------------------------------------------------- lazy arrays

class _LazyStats:
    """Per-slice stats computed on first use and kept (thread-safe) for a lazily evaluated prediction."""

    def __init__(self, plan: _Plan, given: Sequence[tuple[float, float]] | None) -> None:
        self.plan = plan
        self.values: dict[int, tuple[float, float]] = dict(enumerate(given)) if given is not None else {}
        self.lock = threading.Lock()

    def get(self, k: int) -> tuple[float, float]:
        with self.lock:
            if k not in self.values:
                self.values[k] = _slice_stats_task(self.plan, k)
            return self.values[k]

    def __getstate__(self) -> dict[str, Any]:
        return {"plan": self.plan, "values": dict(self.values)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.plan, self.values, self.lock = state["plan"], state["values"], threading.Lock()


def _lazy_block(plan: _Plan, stats: _LazyStats, block: Block, channel: int, is2d: bool) -> np.ndarray:
    data = compute_block(plan, block, [stats.get(k) for k in range(block.z0, block.z1)])[channel]
    return data[0] if is2d else data


def predict_dask(volume: Any, model: Any, *, tile: TileConfig | None = None, norm: NormConfig | None = None,
                 slices: str | slice | None = None, chunks: Sequence[int] | None = None, channel: int = 0,
                 stats: Sequence[tuple[float, float]] | None = None, device: str = "auto", precision: str = "auto",
                 tta: TTAConfig | None = None) -> Any:
    """A lazy dask array (float32, the output shape of :func:`iter_predict`) of the prediction of ``volume``.

    Nothing runs until blocks are computed (e.g. by a napari layer showing one slice); each block is identical
    to the same pixels of the single-process run. ``model``: a checkpoint name/path, a :class:`ModelSpec`, a
    :class:`PredictorSource` or a predictor callable (loaded once per process). ``chunks`` default to whole
    slices up to 4096 px per side. ``channel`` 1 is the TTA variance when the predictor gives it. Per-slice
    normalisation stats are computed on first use and kept, unless given.
    """
    _require_dask()
    import dask.array as da

    plan, out_shape = _make_plan(volume, model, tile, norm, slices, {"device": device, "precision": precision, "tta": tta})
    if not 0 <= channel < plan.n_out:
        raise ValueError(f"channel {channel} out of range for a predictor with {plan.n_out} output channel(s)")
    chunks = tuple(int(c) for c in chunks) if chunks is not None else \
        default_block(out_shape, default_chunks(out_shape))
    if len(chunks) != len(out_shape):
        raise ValueError(f"chunks {chunks} must have one entry per axis of {out_shape}")
    lazy_stats = _LazyStats(plan, stats)
    is2d = len(out_shape) == 2
    name = f"neuroedge-predict-{id(lazy_stats):x}-{time.monotonic_ns():x}"
    dsk: dict[Any, Any] = {}
    for b in plan_blocks(out_shape, chunks):
        idx = (b.y0 // chunks[-2], b.x0 // chunks[-1])
        key = (name, *idx) if is2d else (name, b.z0 // chunks[0], *idx)
        dsk[key] = (_lazy_block, plan, lazy_stats, b, channel, is2d)
    dims = [tuple(min(c, s - i) for i in range(0, s, c)) for s, c in zip(out_shape, chunks)]
    return da.Array(dsk, name, chunks=tuple(dims), dtype=np.float32)


def lazy_array(data: Any, chunks: Sequence[int] | None = None) -> Any:
    """A dask array over any array-like (zarr, memmap, TIFF-zarr store) without reading it."""
    _require_dask()
    import dask.array as da

    if isinstance(data, da.Array):
        return data
    if chunks is None:
        native = getattr(data, "chunks", None)
        chunks = tuple(native) if isinstance(native, tuple) and all(isinstance(c, int) for c in native) else \
            default_chunks(data.shape)
    return da.from_array(data, chunks=tuple(chunks), asarray=True, lock=False, fancy=False)


def _make_plan(volume: Any, model: Any, tile: TileConfig | None, norm: NormConfig | None,
               slices: str | slice | None, model_options: dict[str, Any] | None = None
               ) -> tuple[_Plan, tuple[int, ...]]:
    source = as_source(model, **(model_options or {}))
    if isinstance(source, ModelSpec):
        source = source.resolved()
    ref = volume_ref(volume)
    vol = ref.open()
    if vol.ndim not in (2, 3):
        raise ValueError(f"expected a 2D image or 3D stack, got shape {tuple(vol.shape)}")
    tile = tile or TileConfig()
    if tile.batch < 1:
        raise ValueError(f"batch must be >= 1, got {tile.batch}")
    info = source.describe()
    norm = norm or info.get("norm") or NormConfig()
    if not tile.context:  # the model's measured receptive context, fixed here so every worker tiles alike
        tile = replace(tile, context=int(info.get("context") or DEFAULT_CONTEXT))
    zs: tuple[int | None, ...] = (None,) if vol.ndim == 2 else tuple(parse_slices(slices, int(vol.shape[0])))
    out_shape = tuple(int(s) for s in vol.shape) if vol.ndim == 2 else (len(zs), *(int(s) for s in vol.shape[1:]))
    plan = _Plan(ref, source, zs, tile, norm, int(info.get("multiple", 1)), int(info.get("out_channels", 1)))
    return plan, out_shape


# --------------------------------------------------------------------------------------------- schedulers

def local_cluster(workers: int | None = None, devices: Sequence[str] | None = None, threads_per_worker: int = 1,
                  memory_limit: str | float = "auto", dashboard: bool = False) -> Any:
    """A local Dask cluster of worker *processes* (call ``.close()`` or use ``with``).

    ``devices`` (e.g. ``["cuda:0", "cuda:1"]`` or ``["cpu", "cpu"]``) starts one worker per entry: a
    ``cuda:i`` worker sees only GPU i (``CUDA_VISIBLE_DEVICES=i``) and uses it as ``cuda``; others get
    ``NEUROEDGE_DEVICE`` set so ``ModelSpec(device="auto")`` picks it. Without devices, ``workers`` processes
    (default: one per CPU core) use the best device each finds.
    """
    _require_dask()
    from distributed import Nanny, Scheduler, SpecCluster

    if devices is not None:
        devices = [str(d) for d in devices]
        if not devices:
            raise ValueError("devices must name at least one device")
    n = len(devices) if devices is not None else int(workers or os.cpu_count() or 1)
    specs = {f"neuroedge-{i}": {"cls": Nanny, "options": {
        "nthreads": int(threads_per_worker), "env": env, "host": "127.0.0.1", "silence_logs": logging.WARNING,
        "memory_limit": _memory_limit(memory_limit, n)}} for i, env in enumerate(worker_envs(n, devices))}
    scheduler = {"cls": Scheduler, "options": {"dashboard": dashboard, "dashboard_address": ":0", "host": "127.0.0.1"}}
    return SpecCluster(workers=specs, scheduler=scheduler, silence_logs=logging.WARNING, name="neuroedge")


def worker_envs(n: int, devices: Sequence[str] | None = None) -> list[dict[str, str]]:
    """Environment variables for each of ``n`` local workers, one per entry of ``devices`` when given."""
    if n < 1:
        raise ValueError(f"need at least one worker, got {n}")
    if devices is None:
        return [{} for _ in range(n)]
    envs = []
    for i, dev in enumerate(str(d).lower() for d in devices):
        if dev.startswith("cuda"):
            index = dev.split(":", 1)[1] if ":" in dev else str(i)
            envs.append({"CUDA_VISIBLE_DEVICES": index, DEVICE_ENV: "cuda"})
        elif dev in ("cpu", "mps"):
            envs.append({DEVICE_ENV: dev})
        else:
            raise ValueError(f"unknown device {dev!r}; expected cpu, mps, cuda or cuda:N")
    return envs


def _memory_limit(limit: str | float, n: int) -> Any:
    if limit != "auto":
        return limit
    try:
        import psutil

        return int(psutil.virtual_memory().total / n)
    except ImportError:
        return "auto"


@contextlib.contextmanager
def dask_client(scheduler: Any, workers: int | None = None, devices: Sequence[str] | None = None
                ) -> Iterator[Any]:
    """Yield a ``distributed.Client`` for ``scheduler``: "local" (a new :func:`local_cluster`, closed after),
    an address ("tcp://host:8786", "host:8786") or an existing Client (not closed after)."""
    _require_dask()
    from distributed import Client

    if isinstance(scheduler, Client):
        yield scheduler
        return
    if scheduler == "local":
        with local_cluster(workers, devices) as cluster, Client(cluster) as client:
            yield client
        return
    with Client(str(scheduler)) as client:
        yield client


# ------------------------------------------------------------------------------------------ resumable blockwise

@dataclass
class BlockwiseResult:
    """What a blockwise run did: outputs written, blocks computed now / already done, tiles run, seconds."""

    outputs: list[Path]
    blocks_total: int
    blocks_computed: int
    blocks_skipped: int
    tiles: int
    seconds: float


def work_dir(output: str | Path) -> Path:
    """The folder holding a blockwise job's partial output and done-markers: ``.NAME.blockwise`` beside it."""
    output = Path(output)
    return output.parent / f".{output.name}{WORK_SUFFIX}"


def _job_record(plan: _Plan, vol_shape: Sequence[int], vol_dtype: Any, out_shape: Sequence[int],
                chunks: Sequence[int], block: Sequence[int], n_outputs: int) -> dict[str, Any]:
    return json.loads(json.dumps({
        "format": "napari-neuroedge-blockwise", "version": 1, "input": plan.volume.describe(),
        "input_shape": list(vol_shape), "input_dtype": np.dtype(vol_dtype).str,
        "slices": [z for z in plan.zs], "output_shape": list(out_shape), "chunks": list(chunks),
        "block": list(block), "tile": to_dict(plan.tile), "norm": to_dict(plan.norm), "model": plan.source.key(),
        "multiple": plan.multiple, "channels": plan.n_out, "outputs": n_outputs,
    }, default=str))


def iter_predict_blockwise(volume: Any, output: str | Path, model: Any, *, tile: TileConfig | None = None,
                           norm: NormConfig | None = None, slices: str | slice | None = None,
                           variance_output: str | Path | None = None, chunks: Sequence[int] | None = None,
                           block: Sequence[int] | None = None, scheduler: Any = "threads",
                           workers: int | None = None, devices: Sequence[str] | None = None,
                           resume: bool = True, retries: int = 2, device: str = "auto", precision: str = "auto",
                           tta: TTAConfig | None = None, threads: int = 0
                           ) -> Generator[ProgressEvent, None, BlockwiseResult]:
    """Predict ``volume`` blockwise into the zarr array ``output``; yields ProgressEvent(blocks done, total).

    ``volume``: an input path (opened by each worker; best for clusters) or an array-like. ``model``: a
    checkpoint name/path, :class:`ModelSpec` or predictor source (see :func:`as_source`); ``norm`` defaults
    to the checkpoint's. ``chunks``/``block``: output zarr chunks and task blocks in voxels, per axis of the
    output ((y, x) or (z, y, x)); blocks must be whole chunks. ``scheduler``: "threads" (``workers``
    threads), "sync", "local" (a :func:`local_cluster` of ``workers`` processes or one per entry of
    ``devices``), a scheduler address or a ``distributed.Client``. ``variance_output`` receives channel 1
    (TTA variance) when the predictor gives it. ``device``/``precision``/``tta``/``threads`` configure a model given
    by checkpoint name or path (``device="auto"``: each worker's assigned or best device).

    The output appears under its name only when every block is done; until then it lives in
    :func:`work_dir` (kept on error or cancel), and a rerun with the same settings computes only the blocks
    not marked done (``resume=False`` refuses to reuse one). Raises OutputExistsError if ``output`` exists.
    """
    _require_dask()
    import zarr

    from ..io import EMStack, open_stack

    t_start = time.perf_counter()
    check_scheduler(scheduler)
    output = Path(output)
    outputs = [output] + ([Path(variance_output)] if variance_output is not None else [])
    for path in outputs:
        if not str(path).rstrip("/").lower().endswith(".zarr"):
            raise ValueError(f"{path}: blockwise outputs must be zarr arrays (a name ending in .zarr)")
        if path.exists():
            raise OutputExistsError(f"{path} already exists; choose another name (nothing was overwritten)")
    voxel = None
    if isinstance(volume, (str, Path)):
        stack: EMStack = open_stack(volume)
        voxel = stack.voxel_size
    plan, out_shape = _make_plan(volume, model, tile, norm, slices,
                                 {"device": device, "precision": precision, "tta": tta, "threads": threads})
    vol = plan.volume.open()
    if len(outputs) > plan.n_out:
        raise ValueError("variance_output needs a predictor with a variance channel (TTA with variance)")
    chunks = tuple(int(c) for c in chunks) if chunks is not None else default_chunks(out_shape)
    block = tuple(int(b) for b in block) if block is not None else default_block(out_shape, chunks)
    _check_block(out_shape, chunks, block)
    record = _job_record(plan, vol.shape, vol.dtype, out_shape, chunks, block, len(outputs))

    work = work_dir(output)
    done_dir = work / "done"
    arrays = [work / f"channel{c}.zarr" for c in range(len(outputs))]
    if work.exists():
        if not resume:
            raise OutputExistsError(f"{work} holds a partial blockwise run; resume it or delete that folder")
        try:
            old = json.loads((work / "job.json").read_text())
        except (OSError, ValueError):
            old = None
        if old != record:
            raise ValueError(f"{work} holds a partial run with other settings (input, model, tile, norm, chunks, "
                             "blocks or outputs differ); rerun with the same settings or delete that folder")
    else:
        tmp = work.with_name(work.name + f".{os.getpid()}.new")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "done").mkdir(parents=True)
        for c in range(len(outputs)):
            arr = zarr.open(str(tmp / f"channel{c}.zarr"), mode="w-", shape=out_shape, chunks=chunks,
                            dtype="float32", fill_value=0.0)
            if voxel is not None:
                arr.attrs["voxel_size"] = list(voxel)
        (tmp / "job.json").write_text(json.dumps(record, indent=2))
        os.rename(tmp, work)
    plan.outputs = tuple(str(a) for a in arrays)
    plan.done_dir = str(done_dir)

    blocks = plan_blocks(out_shape, block)
    finished = {p.name for p in done_dir.iterdir()}
    todo = [b for b in blocks if b.name not in finished]
    total, skipped = len(blocks), len(blocks) - len(todo)
    tiles = 0
    yield ProgressEvent(skipped, total, "predict", {"resumed": skipped}, unit="blocks")
    done = skipped
    for info in _run_blocks(plan, todo, scheduler, workers, devices, retries):
        tiles += int(info["tiles"])
        done += 1
        yield ProgressEvent(done, total, "predict", info, unit="blocks")
    missing = [b.name for b in blocks if not (done_dir / b.name).exists()]
    if missing:
        raise RuntimeError(f"{len(missing)} block(s) have no done-marker after the run (e.g. {missing[0]}); "
                           f"rerun to complete them (partial output kept in {work})")
    for arr, dest in zip(arrays, outputs):
        if dest.exists():
            raise OutputExistsError(f"{dest} already exists; the finished result stays in {arr}")
    for arr, dest in zip(arrays, outputs):
        os.rename(arr, dest)
    shutil.rmtree(work, ignore_errors=True)
    return BlockwiseResult(outputs, total, len(todo), skipped, tiles, time.perf_counter() - t_start)


def _stats_key(plan_key: str, k: int) -> tuple[str, int]:
    return (f"neuroedge-stats-{plan_key}", k)


def _build_tasks(plan: _Plan, todo: Sequence[Block], cancel: Any) -> list[Any]:
    """Delayed block tasks (one per block) depending on delayed per-slice stats (one per slice needed)."""
    from dask import delayed

    tag = f"{os.getpid():x}-{time.monotonic_ns():x}"
    plan_d = delayed(plan, name=f"neuroedge-plan-{tag}", traverse=False)
    stats: dict[int, Any] = {}
    tasks = []
    for b in todo:
        deps = []
        for k in range(b.z0, b.z1):
            if k not in stats:
                stats[k] = delayed(_slice_stats_task, pure=False)(plan_d, k, dask_key_name=_stats_key(tag, k))
            deps.append(stats[k])
        tasks.append(delayed(_block_write_task, pure=False)(plan_d, b, cancel, *deps,
                                                            dask_key_name=f"neuroedge-block-{tag}-{b.name}"))
    return tasks


def check_scheduler(scheduler: Any) -> None:
    """Raise ValueError unless ``scheduler`` is one :func:`iter_predict_blockwise` understands."""
    if scheduler is None or not isinstance(scheduler, str):
        return
    if scheduler not in ("threads", "sync", "synchronous", "local") and ":" not in scheduler:
        raise ValueError(f"unknown scheduler {scheduler!r}; expected threads, sync, local, a scheduler address "
                         "(tcp://host:8786) or a distributed.Client")


def _run_blocks(plan: _Plan, todo: Sequence[Block], scheduler: Any, workers: int | None,
                devices: Sequence[str] | None, retries: int) -> Iterator[dict[str, Any]]:
    """Run the block tasks on ``scheduler``; yields each finished block's info as it completes."""
    if not todo:
        return
    check_scheduler(scheduler)
    if scheduler in (None, "threads", "sync", "synchronous"):
        yield from _run_local(plan, todo, "sync" if scheduler in ("sync", "synchronous") else "threads",
                              int(workers or 1))
        return
    with dask_client(scheduler, workers, devices) as client:
        yield from _run_distributed(client, plan, todo, retries)


def _run_local(plan: _Plan, todo: Sequence[Block], scheduler: str, workers: int) -> Iterator[dict[str, Any]]:
    import dask

    cancel = threading.Event()
    events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def notify(info: dict[str, Any]) -> dict[str, Any]:
        events.put(("block", info))
        return info

    tasks = [dask.delayed(notify, pure=False)(t) for t in _build_tasks(plan, todo, cancel)]

    def run() -> None:
        try:
            dask.compute(*tasks, scheduler=scheduler, num_workers=workers)
            events.put(("end", None))
        except BaseException as exc:  # handed to the consuming thread
            events.put(("error", exc))

    thread = threading.Thread(target=run, name="neuroedge-blockwise", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = events.get()
            if kind == "block":
                yield value
            elif kind == "error":
                raise value
            else:
                break
    finally:
        cancel.set()  # stops blocks not yet started if the consumer stopped early
        thread.join()


def _run_distributed(client: Any, plan: _Plan, todo: Sequence[Block], retries: int) -> Iterator[dict[str, Any]]:
    from distributed import as_completed

    futures = client.compute(_build_tasks(plan, todo, None), retries=retries)
    try:
        for fut in as_completed(futures):
            yield fut.result()
    finally:
        client.cancel([f for f in futures if not f.done()])


def predict_blockwise(volume: Any, output: str | Path, model: Any, *, progress: Progress | None = None,
                      **kwargs: Any) -> BlockwiseResult:
    """Run :func:`iter_predict_blockwise` to the end (``progress`` gets the events and may cancel)."""
    return drive(iter_predict_blockwise(volume, output, model, **kwargs), progress)
