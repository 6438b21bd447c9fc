"""Tile grids, mirror padding and blending windows for overlap-tile inference (numpy only).

Coordinates are in pixels of the unpadded image; tiles may start before 0 or end past the border, and the
pixels there are read by mirror (reflect) indexing, as in the U-Net overlap-tile strategy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TileGrid:
    """Tiles of ``tile_h`` x ``tile_w`` px over an (height, width) image, starting at ``ys`` x ``xs`` (image
    coords); neighbours overlap by at least ``2 * context`` px (the context the blending window trusts)."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    context: int = 0

    @property
    def n_tiles(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def tile_shape(self) -> tuple[int, int]:
        return self.tile_h, self.tile_w

    @property
    def tile_pixels(self) -> int:
        """Pixels the network runs on per slice (all tiles), against height * width the image has."""
        return self.n_tiles * self.tile_h * self.tile_w


def tiles_in_range(starts: Sequence[int], tile: int, lo: int, hi: int) -> list[int]:
    """The tile starts (of tiles ``tile`` px long) whose tile intersects [lo, hi)."""
    return [s for s in starts if s < hi and s + tile > lo]


def round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``length`` px with ``stride``; the last one is flush."""
    if length <= tile:
        return [0]
    out = list(range(0, length - tile, stride))
    out.append(length - tile)
    return out


#: Context (px) for models that do not record their own: the measured receptive context of the default U-Net
#: (beyond 80 px a change of the input moves its probability by < 1e-3 on ISBI 2012).
DEFAULT_CONTEXT = 80


def _axis_plan(length: int, tile: int, overlap: int, multiple: int) -> tuple[int, int]:
    """(n tiles, smallest tile size) covering ``length`` px (rounded up to ``multiple``) with tiles of at most
    ``tile`` px whose starts are multiples of ``multiple`` and which overlap by at least ``overlap`` px."""
    length = round_up(length, multiple)
    if length <= tile:
        return 1, length
    n = math.ceil((length - overlap) / max(tile - overlap - multiple, 1))
    while True:
        size = round_up(math.ceil((length + (n - 1) * overlap) / n), multiple)
        while size <= tile and _min_overlap(spread(length, size, n, multiple), size) < overlap:
            size += multiple
        if size <= tile:
            return n, size
        n += 1


def _min_overlap(starts: tuple[int, ...], size: int) -> int:
    """The smallest overlap (px) of neighbouring tiles of ``size`` px starting at ``starts`` (n >= 2)."""
    return min(size - (b - a) for a, b in zip(starts, starts[1:]))


def spread(length: int, tile: int, n: int, multiple: int = 1) -> tuple[int, ...]:
    """``n`` tile starts spread evenly over ``length`` px (rounded up to ``multiple``), each a multiple of
    ``multiple`` (so every tile sees the network's pooling grid as the whole image does), the first at 0."""
    length = round_up(length, multiple)
    if n == 1 or length <= tile:
        return (0,)
    last = length - tile
    return tuple(min(last, (int(round(i * last / (n - 1))) // multiple) * multiple) for i in range(n - 1)) + (last,)


def make_grid(height: int, width: int, tile: int, context: int = DEFAULT_CONTEXT, multiple: int = 1) -> TileGrid:
    """Plan tiles of at most ``tile`` x ``tile`` px for one (height, width) slice with the fewest tile pixels.

    Neighbouring tiles overlap by ``2 * context`` px (``context``: the model's receptive context, beyond which
    the input no longer changes its output; at most half a tile), so every pixel has a tile that sees its whole
    context; tiles are spread evenly, start at multiples of ``multiple`` and begin at the image's top/left
    border, where the network sees what it sees on a whole image (no mirror margin); past the bottom/right
    border they read the mirror image, as the network's own padding to ``multiple`` does. Each axis is planned
    on its own, so tiles are rectangular where the image is (a 512 x 1024 image is one 512 x 1024 pass; TTA's
    rotations run the transposed tiles as their own forward pass).
    """
    if tile < 1:
        raise ValueError(f"tile must be positive, got {tile}")
    if context < 0:
        raise ValueError(f"context must be >= 0 px, got {context}")
    tile = max(round_up(tile, multiple), multiple)
    overlap = min(2 * int(context), tile // 2)  # tiles smaller than 4 x context trust less of it
    ny, ty = _axis_plan(height, tile, overlap, multiple)
    nx, tx = _axis_plan(width, tile, overlap, multiple)
    ys = spread(height, ty, ny, multiple)
    xs = spread(width, tx, nx, multiple)
    return TileGrid(height, width, ty, tx, ys, xs, overlap // 2)


class PlaneView:
    """A lazy 2D (y, x) view of slice ``z`` of a (z, y, x) array-like, or of a 2D one (``z=None``).

    Indexing reads only the requested rows/columns, so memmaps, zarr and dask arrays stay lazy.
    """

    def __init__(self, volume: Any, z: int | None) -> None:
        self.volume, self.z = volume, z
        self.shape = tuple(int(s) for s in volume.shape[-2:])
        self.dtype = volume.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.volume[key] if self.z is None else self.volume[(self.z, *key)])


def reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Map any integer indices into [0, n) by mirror reflection without repeating the edge (numpy 'reflect')."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


def read_window(plane: Any, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Read ``plane[y0:y0+h, x0:x0+w]`` from a 2D array-like, mirror-reflecting outside its bounds.

    Only the rows/columns needed are read, so memmaps and zarr arrays stay lazy.
    """
    H, W = int(plane.shape[0]), int(plane.shape[1])
    ry = reflect_index(np.arange(y0, y0 + h), H)
    rx = reflect_index(np.arange(x0, x0 + w), W)
    r0, r1, c0, c1 = int(ry.min()), int(ry.max()) + 1, int(rx.min()), int(rx.max()) + 1
    block = np.asarray(plane[r0:r1, c0:c1])
    return block[np.ix_(ry - r0, rx - c0)]


def blend_window(tile: int | tuple[int, int], mode: str = "context", context: int = 0) -> np.ndarray:
    """(h, w) float32 weights for blending overlapping tiles of ``tile`` = (h, w) px (an int: square);
    strictly positive everywhere.

    "context" (the default) gives the pixels within ``context`` px of the tile's edge a weight of 1e-4 and the
    rest 1: wherever a neighbouring tile sees a pixel's whole context it alone decides it, so the stitched
    result equals whole-image inference to the model's context tolerance; a pixel no other tile covers (at
    the image border) keeps this tile's value. "gaussian", "cosine" and "constant" are the classic windows.
    """
    h, w = (tile, tile) if isinstance(tile, int) else (int(tile[0]), int(tile[1]))
    if mode == "constant":
        return np.ones((h, w), np.float32)
    if mode == "context":
        def axis(n: int) -> np.ndarray:
            dist = np.minimum(np.arange(n), np.arange(n)[::-1])
            return np.where(dist < context, 1e-4, 1.0)
    elif mode in ("gaussian", "cosine"):
        def axis(n: int) -> np.ndarray:
            r = np.arange(n) - (n - 1) / 2
            if mode == "gaussian":
                return np.exp(-(r**2) / (2 * max(n * 0.125, 1e-3) ** 2))
            return 0.5 * (1 + np.cos(np.pi * r / (n / 2 + 0.5)))
    else:
        raise ValueError(f"unknown blend mode {mode!r}; expected context, gaussian, cosine or constant")
    win = np.outer(axis(h), axis(w))
    if mode != "context":
        win = np.maximum(win / win.max(), 1e-3)
    return win.astype(np.float32)
