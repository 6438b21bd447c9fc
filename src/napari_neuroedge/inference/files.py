"""Prediction from an input file to output files: the pipeline with atomic, never-overwriting file sinks.

``neuroedge predict`` is argument parsing around these. :func:`iter_predict_files` opens every requested output
(TIFF, zarr or OME-Zarr by its name, see :func:`napari_neuroedge.io.stacks.open_output`) under a temporary name, runs
the :mod:`.pipeline` into them and publishes them only when it finished; a failure or a cancel leaves nothing.
:func:`predict_blockwise_files` runs the blockwise Dask job into a restartable probability zarr and thresholds
the membranes from it with the pipeline's :func:`~.pipeline.threshold_into`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import check_free
from ..progress import Progress, ProgressEvent
from .pipeline import (OutputPlan, PredictionOutcome, PredictionRequest, iter_run, load_request_model, output_shape,
                       scratch_probability, threshold_into)


@dataclass(frozen=True)
class OutputFiles:
    """Output paths: ``membranes`` (uint8, 1 = membrane) and optionally the probability, instances, TTA variance
    and an overlay PNG."""

    membranes: str | Path
    probability: str | Path | None = None
    instances: str | Path | None = None
    variance: str | Path | None = None
    overlay: str | Path | None = None

    def paths(self) -> list[Path]:
        return [Path(p) for p in (self.membranes, self.probability, self.instances, self.variance, self.overlay)
                if p is not None]


def check_outputs(files: OutputFiles) -> None:
    """Before any work: no output may exist yet, and a label inside an OME-Zarr image
    (``IMAGE.ome.zarr/labels/NAME``) needs that image, written now or already there."""
    from ..io.ngff import check_label_paths

    check_free(*files.paths())
    check_label_paths([files.membranes, files.probability, files.instances, files.variance])


def iter_predict_files(stack: Any, request: PredictionRequest, files: OutputFiles, name: str = ""
                       ) -> Generator[ProgressEvent, None, PredictionOutcome]:
    """Predict ``stack`` (an :class:`~napari_neuroedge.io.stacks.EMStack`) into ``files``; yields the pipeline's events.

    Outputs get the input's voxel size; OME-Zarr pyramids are built by nearest neighbour for labels and by the
    mean for the probability and variance. ``name`` captions the overlay.
    """
    from ..io.stacks import open_output
    from ..io.overlay import write_stack_overlay
    from .postprocess import instance_dtype
    from ..slices import parse_slices

    check_outputs(files)
    vol, voxel = stack.data, stack.voxel_size
    if vol.ndim == 2 and request.slices:
        raise ValueError("slices need a 3D stack; the input is a single 2D image")
    zs = None if vol.ndim == 2 else list(parse_slices(request.slices, int(vol.shape[0])))
    shape = output_shape(vol.shape, zs)
    with contextlib.ExitStack() as ctx:
        def output(path: str | Path | None, dtype: Any, label: bool) -> Any:
            if path is None:
                return None
            return ctx.enter_context(open_output(path, shape, dtype, voxel_size=voxel, label=label,
                                                 downsample="nearest" if label else "mean"))

        plan = OutputPlan(output(files.probability, np.float32, False), output(files.membranes, np.uint8, True),
                          output(files.variance, np.float32, False),
                          output(files.instances, instance_dtype(tuple(vol.shape)), True))
        if plan.probability is None and files.overlay is not None:  # the overlay shows it: keep it on disk
            plan.probability = scratch_probability(ctx, shape)
        outcome = yield from iter_run(vol, replace(request, slices=zs), plan)
        if files.overlay is not None:
            write_stack_overlay(files.overlay, vol, plan.probability, zs, outcome.threshold, name)
    return outcome


def predict_blockwise_files(input_path: str | Path, request: PredictionRequest, files: OutputFiles, *,
                            chunk: int | None = None, block: int | None = None, scheduler: Any = "threads",
                            workers: int | None = None, devices: Sequence[str] | None = None,
                            progress: Progress | None = None) -> None:
    """``request`` run blockwise (Dask, restartable): the probability into ``files.probability`` (a plain
    ``.zarr``), then the membranes thresholded from it into ``files.membranes`` (any output format). The
    request's model must be a bundled name or a checkpoint path the workers can read, or a checkpoint loaded
    from one; it is loaded once here (the workers load it once each). Instances and overlays are not computed
    here (run them on the probability afterwards)."""
    from ..io.stacks import is_zarr_path, open_output, open_stack
    from ..io.ngff import is_ome_zarr_path
    from .blockwise import predict_blockwise

    prob_path = files.probability
    if prob_path is None or not is_zarr_path(prob_path) or is_ome_zarr_path(prob_path):
        raise ValueError("--scheduler needs --prob PATH.zarr (plain zarr, not .ome.zarr): the blockwise job writes "
                         "the probability there (restartable), and OUT (which may be .ome.zarr) is thresholded from it")
    if files.instances or files.overlay:
        raise ValueError("--instances/--overlay are not available with --scheduler; run them on --prob afterwards")
    if files.variance is not None and not is_zarr_path(files.variance):
        raise ValueError("with --scheduler, --uncertainty must be a .zarr path")
    named = getattr(request.model, "origin", None) or request.model  # a loaded checkpoint: the file it came from
    if request.predictor is not None or not isinstance(named, (str, Path)):
        raise ValueError("blockwise prediction needs the model as a bundled name or a checkpoint path")
    check_outputs(files)
    stack = open_stack(input_path)
    ckpt = load_request_model(request)
    threshold = request.threshold if request.threshold is not None else ckpt.threshold
    lead = (1,) * (len(stack.shape) - 2)
    predict_blockwise(input_path, prob_path, replace(request, model=ckpt), progress=progress,
                      variance_output=files.variance, chunks=(*lead, chunk, chunk) if chunk else None,
                      block=(*lead, block, block) if block else None, scheduler=scheduler, workers=workers,
                      devices=devices)
    prob = open_stack(prob_path).data
    with open_output(files.membranes, tuple(prob.shape), np.uint8, voxel_size=stack.voxel_size, label=True) as out:
        threshold_into(prob, out, threshold)
