"""Lazy dask arrays: the prediction of a volume computed block by block only when a part of it is read
(e.g. by a napari layer), and a dask view of any array-like."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..pipeline import PredictionRequest
from .geometry import Block, default_block, default_chunks, plan_blocks
from .plan import _Plan, _make_plan, _slice_stats_task, compute_block
from .scheduling import _require_dask


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


def predict_dask(volume: Any, request: PredictionRequest, *, chunks: Sequence[int] | None = None, channel: int = 0,
                 stats: Sequence[tuple[float, float]] | None = None) -> Any:
    """A lazy dask array (float32, the output shape of :func:`iter_predict`) of the prediction of ``volume``.

    Nothing runs until blocks are computed (e.g. by a napari layer showing one slice); each block is identical
    to the same pixels of the single-process run. ``request``: the pipeline's
    :class:`~..pipeline.PredictionRequest`, its model a checkpoint name/path or loaded checkpoint, a
    :class:`ModelSpec`, a :class:`PredictorSource` or a predictor callable (loaded once per process; see
    :func:`source_of`). ``chunks`` default to whole
    slices up to 4096 px per side. ``channel`` 1 is the TTA variance when the predictor gives it. Per-slice
    normalisation stats are computed on first use and kept, unless given.
    """
    _require_dask()
    import dask.array as da

    plan, out_shape = _make_plan(volume, request, variance=channel == 1)
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
