"""The chunking of every zarr array this package writes (plain zarr, OME-Zarr, the viewer's work store): one
slice deep and at most :data:`CHUNK` x :data:`CHUNK` px, so a slice is read or written a row of chunks at a
time; arrays the user paints in the viewer use :data:`PAINT_CHUNK` (:func:`paint_chunks`). Below the writers
(:mod:`.stacks`, :mod:`.ngff`, :mod:`.workstore`) and the prediction sinks that fill them."""

from __future__ import annotations

from collections.abc import Sequence

CHUNK = 1024  # px: default (y, x) chunk side of chunked outputs; stacks use (1, CHUNK, CHUNK)
PAINT_CHUNK = 512  # px: (y, x) chunk side of the viewer's label arrays the user paints (a dab rewrites a chunk)


def chunks_for(shape: Sequence[int], chunk: int = CHUNK) -> tuple[int, ...]:
    """The default chunks of every zarr output (plain, OME-Zarr, the viewer's work store): one slice deep, at
    most ``chunk`` x ``chunk`` px in (y, x)."""
    yx = tuple(max(1, min(int(s), chunk)) for s in shape[-2:])
    return (1,) * (len(shape) - 2) + yx


def paint_chunks(shape: Sequence[int]) -> tuple[int, ...]:
    """The chunks of an array the user paints in the viewer (the work store's label outputs, large blank label
    layers): :func:`chunks_for` with :data:`PAINT_CHUNK` px, so a brush dab reads and rewrites 256 KiB of uint8, not
    a 1 MiB chunk. Measured on a zarr-backed 4096^2 uint8 layer: a dab took 15 / 5 / 3 ms with 1024^2 / 512^2 /
    256^2 chunks, a whole-slice read (napari's display) 21 / 39 / 123 ms."""
    return chunks_for(shape, PAINT_CHUNK)
