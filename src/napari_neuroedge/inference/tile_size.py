"""How large a tile may be: as large as the device's memory allows, up to the size past which bigger tiles
stop saving work.

A bigger tile repeats fewer overlap pixels (at 2048^2 one 2048 px pass instead of nine 800 px tiles: 1.37x the
pixels), and an image that fits in one tile has no overlap at all. The cost is working memory, proportional to
the tile's pixels: measured for the default U-Net (peak RSS growth of one forward pass, ``ru_maxrss``, 1024-4096
px tiles) 150 B/px in bf16 autocast with channels_last, about twice that in fp32.
"""

from __future__ import annotations

import os
from typing import Any

#: Working memory of one forward pass per tile pixel (bytes), by precision, for the default U-Net (+ margin).
BYTES_PER_PIXEL = {"bf16": 160, "fp16": 160, "fp32": 320}
#: Tile sizes tried, largest first; past 2048 px the saved overlap is a few percent at most.
CANDIDATES = (2048, 1024, 512)
#: Share of the available memory one forward pass may take (the viewer, the image and the outputs need the rest).
MEMORY_SHARE = 0.25
#: Used where neither the device nor the OS says how much memory is free.
FALLBACK_AVAILABLE = 4 * 2**30
#: Tile size for predictors that are not torch models on a known device (plain callables, tests).
GENERIC_TILE = 1024


def available_memory(device: Any = "cpu") -> int | None:
    """Free memory (bytes) on ``device``: CUDA's free memory, or the OS's MemAvailable for the CPU; None if
    unknown."""
    kind = getattr(device, "type", str(device).split(":")[0])
    if kind == "cuda":
        import torch

        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if kind != "cpu":
        return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def auto_tile(precision: str = "fp32", device: Any = "cpu", available: int | None = None) -> int:
    """The largest of :data:`CANDIDATES` whose forward pass needs at most :data:`MEMORY_SHARE` of the
    ``available`` memory (default: what ``device`` has free now); the smallest candidate if none fits."""
    free = available if available is not None else (available_memory(device) or FALLBACK_AVAILABLE)
    per_px = BYTES_PER_PIXEL.get(precision, BYTES_PER_PIXEL["fp32"])
    for tile in CANDIDATES:
        if tile * tile * per_px <= MEMORY_SHARE * free:
            return tile
    return CANDIDATES[-1]


def resolve_tile(requested: int, predictor: Any) -> int:
    """The largest tile to plan with: ``requested`` if > 0, else the predictor's own choice
    (``predictor.auto_tile()``, :class:`TorchPredictor` has one), else :data:`GENERIC_TILE`."""
    if requested > 0:
        return int(requested)
    choose = getattr(predictor, "auto_tile", None)
    return int(choose()) if callable(choose) else GENERIC_TILE
