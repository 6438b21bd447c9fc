"""The one stitch kernel: run tiles through a predictor in batches and blend them into an accumulator.

Both ways of predicting use it: :func:`stitch_plane` streams a whole slice band by band into sinks (the
single-process path, :func:`~napari_neuroedge.inference.predict.iter_predict`), and :func:`stitch_region`
computes one rectangle of a slice at once (a Dask block, :mod:`napari_neuroedge.inference.blockwise`). Both
visit the global tile grid in the same row-major order, batch along each tile row the same way and blend with
the same window through :func:`blend_batch`, so the same pixels get bit-identical sums.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np

from ..progress import ProgressEvent
from .normalize import apply_stats
from .tiling import TileGrid, read_window, tiles_in_range

Predictor = Callable[[np.ndarray], np.ndarray]
Tile = tuple[int, int]  # (y, x) start of a tile in image coordinates


def tiles_per_pass(batch: int, grid: TileGrid, predictor: Any) -> int:
    """Tiles per predictor call: ``batch``, but no more than the predictor's own limit for tiles of this size
    (``predictor.batch_limit(tile pixels)``, e.g. 1 Mpx per pass on the CPU), so large auto-sized tiles do not
    multiply the forward pass's memory by the batch (four 1808^2 tiles would need 2 GiB in bf16)."""
    limit = getattr(predictor, "batch_limit", None)
    if callable(limit):
        return max(1, min(int(batch), int(limit(grid.tile_h * grid.tile_w))))
    return max(1, int(batch))


def row_batches(ys: Sequence[int], xs: Sequence[int], batch: int) -> list[list[Tile]]:
    """Tiles (y, x) in row-major order, cut into batches of at most ``batch`` along each tile row."""
    return [[(ty, tx) for tx in xs[b0:b0 + batch]] for ty in ys for b0 in range(0, len(xs), batch)]


def run_batch(predictor: Predictor, tiles: np.ndarray, n_out: int) -> np.ndarray:
    """``predictor`` on a float32 (B, th, tw) stack of normalised tiles -> float32 (B, >= n_out, th, tw), checked."""
    batch = tiles[:, None]
    out = np.asarray(predictor(batch), dtype=np.float32)
    b, th, tw = int(tiles.shape[0]), int(tiles.shape[-2]), int(tiles.shape[-1])
    if out.ndim != 4 or out.shape[0] != b or out.shape[-2:] != (th, tw) or out.shape[1] < n_out:
        raise ValueError(f"predictor returned shape {out.shape} for a batch of {batch.shape}; expected "
                         f"({b}, >={n_out}, {th}, {tw})")
    return out


def blend_batch(out: np.ndarray, tiles: Sequence[Tile], window: np.ndarray, acc: np.ndarray, wsum: np.ndarray,
                top: int, left: int, bounds: tuple[int, int, int, int]) -> None:
    """Add each tile's output times ``window`` into ``acc`` (n_out, h, w) and the weights into ``wsum`` (h, w).

    ``acc[:, 0, 0]`` is image pixel (``top``, ``left``); only the parts of the tiles inside ``bounds`` =
    (y0, y1, x0, x1) (image coordinates) are added.
    """
    n_out, (th, tw) = acc.shape[0], window.shape
    y0, y1, x0, x1 = bounds
    for (ty, tx), res in zip(tiles, out):
        a0, a1 = max(ty, y0), min(ty + th, y1)
        c0, c1 = max(tx, x0), min(tx + tw, x1)
        win = window[a0 - ty:a1 - ty, c0 - tx:c1 - tx]
        acc[:, a0 - top:a1 - top, c0 - left:c1 - left] += res[:n_out, a0 - ty:a1 - ty, c0 - tx:c1 - tx] * win
        wsum[a0 - top:a1 - top, c0 - left:c1 - left] += win


def stitch_region(plane: Any, predictor: Predictor, grid: TileGrid, window: np.ndarray, batch: int,
                  stats: tuple[float, float], y0: int, y1: int, x0: int, x1: int, n_out: int) -> np.ndarray:
    """Rows [y0, y1) x cols [x0, x1) of one slice's stitched prediction: float32 (n_out, y1-y0, x1-x0).

    Reads one input window (the union of the intersecting tiles, mirror-indexed outside the image) and runs
    only the tiles of the global ``grid`` that touch the region.
    """
    th, tw = grid.tile_shape
    ys = tiles_in_range(grid.ys, th, y0, y1)
    xs = tiles_in_range(grid.xs, tw, x0, x1)
    ry0, rx0 = ys[0], xs[0]
    region = apply_stats(read_window(plane, ry0, rx0, ys[-1] + th - ry0, xs[-1] + tw - rx0), stats)
    acc = np.zeros((n_out, y1 - y0, x1 - x0), np.float32)
    wsum = np.zeros((y1 - y0, x1 - x0), np.float32)
    for chunk in row_batches(ys, xs, batch):
        tiles = np.stack([region[ty - ry0:ty - ry0 + th, tx - rx0:tx - rx0 + tw] for ty, tx in chunk])
        blend_batch(run_batch(predictor, tiles, n_out), chunk, window, acc, wsum, y0, x0, (y0, y1, x0, x1))
    return acc / wsum[None]


def stitch_plane(plane: Any, predictor: Predictor, grid: TileGrid, window: np.ndarray, batch: int,
                 stats: tuple[float, float], writers: Sequence[Callable[[int, int, np.ndarray], None]],
                 done: list[int], total: int) -> Generator[ProgressEvent, None, None]:
    """Stitch one whole slice band by band, calling ``writers[c](y0, y1, rows)`` for each finished band of
    output channel c; yields a ProgressEvent(done tiles, total) after every batch (``done[0]`` is advanced).

    Memory: ``t`` rows of accumulators (t: the tile height), whatever the image height.
    """
    H, W, (t, tw) = grid.height, grid.width, grid.tile_shape
    n_out = len(writers)
    band_lo = 0  # first image row held in the band buffers
    # a tile row spans at most t image rows from band_lo, so t rows of accumulators suffice
    acc = np.zeros((n_out, t, W), np.float32)
    wsum = np.zeros((t, W), np.float32)
    for iy, y in enumerate(grid.ys):
        for chunk in row_batches([y], grid.xs, batch):
            tiles = np.stack([apply_stats(read_window(plane, ty, tx, t, tw), stats) for ty, tx in chunk])
            blend_batch(run_batch(predictor, tiles, n_out), chunk, window, acc, wsum, band_lo, 0, (0, H, 0, W))
            done[0] += len(chunk)
            yield ProgressEvent(done[0], total, "predict", unit="tiles")
        # rows above the next tile row's start are final: write and drop them
        final = H if iy + 1 == len(grid.ys) else min(max(grid.ys[iy + 1], 0), H)
        if final > band_lo:
            n = final - band_lo
            for c, write in enumerate(writers):
                write(band_lo, final, acc[c, :n] / wsum[:n])
            # shift the unfinished rows up in place (no new allocation per band)
            acc[:, :t - n] = acc[:, n:].copy() if n < t else acc[:, :0]
            acc[:, t - n:] = 0
            wsum[:t - n] = wsum[n:].copy() if n < t else wsum[:0]
            wsum[t - n:] = 0
            band_lo = final
