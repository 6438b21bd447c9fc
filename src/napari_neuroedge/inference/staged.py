"""Prediction into *staged* arrays: new disk-backed working arrays of a
:class:`~napari_neuroedge.io.workstore.OutputStore` holding only the predicted slices (the Predict widget's path
for images too large or too lazy for memory).

:func:`iter_staged` runs a :class:`~.pipeline.PredictionRequest` into them, one row of chunks at a time, so
memory stays bounded by the tile, the chunk and one row of chunks, never by the volume; on an error or a cancel
they are deleted.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..io.ngff import fill_levels
from ..io.workstore import OutputStore, discard
from .pipeline import OutputPlan, iter_run, output_shape
from .postprocess import instance_dtype


@dataclass
class Staged:
    """The arrays one job predicted: (y, x) for a 2D image, else (k, y, x) for its k slices (OME-Zarr level 0)."""

    probability: Any
    membranes: Any
    variance: Any = None
    instances: Any = None

    def arrays(self) -> list[Any]:
        return [a for a in (self.probability, self.membranes, self.variance, self.instances) if a is not None]


def iter_staged(volume: Any, request: Any, store: OutputStore, *, variance: bool = False, instances: bool = False,
                voxel_size: Sequence[float] | None = None) -> Generator[Any, None, tuple[Staged, Any]]:
    """Generator: run ``request`` (a :class:`~.pipeline.PredictionRequest`) on ``volume`` into new
    staged arrays of ``store``; yields its ProgressEvents, returns (:class:`Staged`, the pipeline's outcome).

    When the request covers the whole volume (its arrays become a viewer's layers as they are), the probability
    and the variance also get their pyramid levels (:meth:`~..io.workstore.OutputStore.levels_of`), computed here
    after the prediction. On an error or a cancel (the generator is closed) the staged arrays are deleted.
    """
    shape = output_shape(volume.shape, None if volume.ndim == 2 else request.slices)
    whole = volume.ndim == 2 or shape[0] == int(volume.shape[0])
    staged = Staged(store.create(shape, np.float32, "boundary", voxel_size, pyramid=whole),
                    store.create(shape, np.uint8, "membranes", voxel_size))
    try:
        if variance:
            staged.variance = store.create(shape, np.float32, "uncertainty", voxel_size, pyramid=whole)
        if instances:
            staged.instances = store.create(shape, instance_dtype(tuple(volume.shape)), "instances", voxel_size)
        plan = OutputPlan(staged.probability, staged.membranes, staged.variance, staged.instances,
                          check=store.check_open)
        outcome = yield from iter_run(volume, request, plan)
        for arr in (staged.probability, staged.variance):
            if arr is not None:
                fill_levels(store.levels_of(arr), mode="mean")
    except BaseException:  # failed or cancelled (GeneratorExit): nothing half-done is left on disk
        discard(store, staged.arrays())
        raise
    return staged, outcome
