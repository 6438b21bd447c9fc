"""Block geometry: the boxes of output voxels a blockwise job splits a volume into, and which tiles of the
global grid each one runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...io.chunks import CHUNK, chunks_for
from ..tiling import TileGrid, tiles_in_range

DEFAULT_CHUNK = CHUNK  # px, output zarr chunk side in y/x (the one default of every zarr output, chunks.CHUNK)
DEFAULT_BLOCK = 4096  # px, largest task block side in y/x before a slice is split


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
    """Output zarr chunks: one slice deep, ``chunk`` px (or the whole extent) in y and x (:func:`chunks_for`)."""
    return chunks_for(shape, chunk)


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


def check_block(shape: Sequence[int], chunks: Sequence[int], block: Sequence[int]) -> None:
    if len(chunks) != len(shape) or len(block) != len(shape):
        raise ValueError(f"chunks {tuple(chunks)} and block {tuple(block)} must have one entry per axis of "
                         f"{tuple(shape)}")
    for s, c, b in zip(shape, chunks, block):
        if c < 1 or b < 1:
            raise ValueError(f"chunks {tuple(chunks)} and block {tuple(block)} must be positive")
        if b < s and b % c:
            raise ValueError(f"block {tuple(block)} must be a multiple of the output chunks {tuple(chunks)} (or "
                             f"cover the whole axis) so each chunk is written by exactly one task")


def block_tiles(grid: TileGrid, block: Block) -> list[tuple[int, int]]:
    """Tiles (y, x) of the global ``grid`` touching ``block`` in y/x, in the single-process (row-major) order."""
    ys = tiles_in_range(grid.ys, grid.tile_h, block.y0, block.y1)
    xs = tiles_in_range(grid.xs, grid.tile_w, block.x0, block.x1)
    return [(y, x) for y in ys for x in xs]
