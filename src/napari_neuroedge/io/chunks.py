"""The chunking of every zarr array this package writes (plain zarr, OME-Zarr, the viewer's work store): one
slice deep and at most :data:`CHUNK` x :data:`CHUNK` px, so a slice is read or written a row of chunks at a
time. Below the writers (:mod:`.stacks`, :mod:`.ngff`, :mod:`.workstore`) and the prediction sinks that fill them."""

from __future__ import annotations

from collections.abc import Sequence

CHUNK = 1024  # px: default (y, x) chunk side of chunked outputs; stacks use (1, CHUNK, CHUNK)


def chunks_for(shape: Sequence[int], chunk: int = CHUNK) -> tuple[int, ...]:
    """The default chunks of every zarr output (plain, OME-Zarr, the viewer's work store): one slice deep, at
    most ``chunk`` x ``chunk`` px in (y, x)."""
    yx = tuple(max(1, min(int(s), chunk)) for s in shape[-2:])
    return (1,) * (len(shape) - 2) + yx
