"""Tile grids, mirror padding and blending windows for overlap-tile inference (numpy only).

Coordinates are in pixels of the unpadded image; tiles may start before 0 or end past the border, and the
pixels there are read by mirror (reflect) indexing, as in the U-Net overlap-tile strategy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TileGrid:
    """Square tiles of ``tile`` px over an (height, width) image, starting at ``ys`` x ``xs`` (image coords)."""

    height: int
    width: int
    tile: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def n_tiles(self) -> int:
        return len(self.ys) * len(self.xs)


def round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``length`` px with ``stride``; the last one is flush."""
    if length <= tile:
        return [0]
    out = list(range(0, length - tile, stride))
    out.append(length - tile)
    return out


def make_grid(height: int, width: int, tile: int, overlap: float, multiple: int = 1) -> TileGrid:
    """Plan the tiles for one (height, width) slice.

    ``overlap`` is a fraction of the tile; half of it is mirror-padded onto each image border so border pixels
    get context too. The tile shrinks (to a multiple of ``multiple``) for images smaller than one tile.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if tile < 1:
        raise ValueError(f"tile must be positive, got {tile}")
    tile = round_up(tile, multiple)
    ov = int(round(overlap * tile))
    margin = ov // 2
    if max(height, width) + 2 * margin <= tile:  # one tile: mirror context of at most half the image
        margin = min(margin, max(height, width) // 2)
    hp, wp = height + 2 * margin, width + 2 * margin
    tile = min(tile, round_up(max(hp, wp), multiple))
    ov = min(ov, tile - 1)
    stride = max(tile - ov, 1)
    ys = tuple(s - margin for s in starts(hp, tile, stride))
    xs = tuple(s - margin for s in starts(wp, tile, stride))
    return TileGrid(height, width, tile, ys, xs)


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


def blend_window(tile: int, mode: str = "gaussian") -> np.ndarray:
    """(tile, tile) float32 weights for blending overlapping tiles; strictly positive everywhere."""
    if mode == "constant":
        return np.ones((tile, tile), np.float32)
    centre = (tile - 1) / 2
    r = np.arange(tile) - centre
    if mode == "gaussian":
        sigma = max(tile * 0.125, 1e-3)
        w1 = np.exp(-(r**2) / (2 * sigma**2))
    elif mode == "cosine":
        w1 = 0.5 * (1 + np.cos(np.pi * r / (tile / 2 + 0.5)))
    else:
        raise ValueError(f"unknown blend mode {mode!r}; expected gaussian, cosine or constant")
    w = np.outer(w1, w1)
    w = w / w.max()
    return np.maximum(w, 1e-3).astype(np.float32)
