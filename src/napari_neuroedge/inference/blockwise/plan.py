"""What one block task computes: the shared plan shipped to every worker, per-slice normalisation statistics
and the stitched prediction of a block (the single-process path's stitch kernel, :func:`..stitch.stitch_region`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ...config import NormConfig, TileConfig
from ...slices import parse_slices
from ..normalize import slice_stats
from ..pipeline import output_shape
from ..stitch import stitch_region, tiles_per_pass
from ..tiling import DEFAULT_CONTEXT, PlaneView, TileGrid, blend_window, make_grid
from .geometry import Block
from .sources import ModelSpec, PredictorSource, VolumeRef, cached_predictor, source_of, volume_ref


#: Largest tile of a blockwise job when the request leaves it to us: blocks are chunk-aligned (1024 px by
#: default), and a tile larger than a block would be recomputed by each block it touches; several workers
#: share the machine's memory.
BLOCKWISE_TILE = 1024


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
    window = blend_window(grid.tile_shape, plan.tile.blend, grid.context)
    batch = tiles_per_pass(plan.tile.batch, grid, predictor)
    out = np.empty((plan.n_out, *block.shape), np.float32)
    for i, k in enumerate(range(block.z0, block.z1)):
        plane = PlaneView(vol, plan.zs[k])
        out[:, i] = stitch_region(plane, predictor, grid, window, batch, stats[i],
                                  block.y0, block.y1, block.x0, block.x1, plan.n_out)
    return out


def _make_plan(volume: Any, request: Any, variance: bool = False) -> tuple[_Plan, tuple[int, ...]]:
    """The plan of a :class:`~..pipeline.PredictionRequest` on ``volume`` (its model, tile, norm and slices;
    ``variance``: the predictor must also give the TTA variance) and the output shape."""
    source = source_of(request, variance)
    if isinstance(source, ModelSpec):
        source = source.resolved()
    ref = volume_ref(volume)
    vol = ref.open()
    if vol.ndim not in (2, 3):
        raise ValueError(f"expected a 2D image or 3D stack, got shape {tuple(vol.shape)}")
    tile = request.tile
    if tile.batch < 1:
        raise ValueError(f"batch must be >= 1, got {tile.batch}")
    info = source.describe()
    norm = request.norm or info.get("norm") or NormConfig()
    if not tile.tile:  # tiles larger than the blocks would be recomputed for every block they touch
        tile = replace(tile, tile=BLOCKWISE_TILE)
    if not tile.context:  # the model's measured receptive context, fixed here so every worker tiles alike
        tile = replace(tile, context=int(info.get("context") or DEFAULT_CONTEXT))
    zs: tuple[int | None, ...] = (None,) if vol.ndim == 2 else tuple(parse_slices(request.slices, int(vol.shape[0])))
    out_shape = output_shape(vol.shape, None if vol.ndim == 2 else zs)
    plan = _Plan(ref, source, zs, tile, norm, int(info.get("multiple", 1)), int(info.get("out_channels", 1)))
    return plan, out_shape
