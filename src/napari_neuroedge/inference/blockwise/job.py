"""The resumable blockwise job: a work folder with one zarr array per output channel, done-markers per block,
a job record that refuses a rerun with other settings, and the atomic move to the final name at the end."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...io.atomic import OutputExistsError, atomic_write_bytes, check_free
from ...config import to_dict
from ...progress import Cancelled, Progress, ProgressEvent, drive
from ..pipeline import PredictionRequest
from .geometry import Block, block_tiles, check_block, default_block, default_chunks, plan_blocks
from .plan import _make_plan, _Plan, compute_block
from .sources import cached_predictor
from .scheduling import _require_dask, _run_blocks, check_scheduler

WORK_SUFFIX = ".blockwise"


@dataclass
class BlockwiseResult:
    """What a blockwise run did: outputs written, blocks computed now / already done, tiles run, seconds."""

    outputs: list[Path]
    blocks_total: int
    blocks_computed: int
    blocks_skipped: int
    tiles: int
    seconds: float


def work_dir(output: str | Path) -> Path:
    """The folder holding a blockwise job's partial output and done-markers: ``.NAME.blockwise`` beside it."""
    output = Path(output)
    return output.parent / f".{output.name}{WORK_SUFFIX}"


def _job_record(plan: _Plan, vol_shape: Sequence[int], vol_dtype: Any, out_shape: Sequence[int],
                chunks: Sequence[int], block: Sequence[int], n_outputs: int) -> dict[str, Any]:
    return json.loads(json.dumps({
        "format": "napari-neuroedge-blockwise", "version": 1, "input": plan.volume.describe(),
        "input_shape": list(vol_shape), "input_dtype": np.dtype(vol_dtype).str,
        "slices": [z for z in plan.zs], "output_shape": list(out_shape), "chunks": list(chunks),
        "block": list(block), "tile": to_dict(plan.tile), "norm": to_dict(plan.norm), "model": plan.source.key(),
        "multiple": plan.multiple, "channels": plan.n_out, "outputs": n_outputs,
    }, default=str))


def iter_predict_blockwise(volume: Any, output: str | Path, request: PredictionRequest, *,
                           variance_output: str | Path | None = None, chunks: Sequence[int] | None = None,
                           block: Sequence[int] | None = None, scheduler: Any = "threads",
                           workers: int | None = None, devices: Sequence[str] | None = None,
                           resume: bool = True, retries: int = 2
                           ) -> Generator[ProgressEvent, None, BlockwiseResult]:
    """Predict ``volume`` as ``request`` says, blockwise into the zarr array ``output``; yields
    ProgressEvent(blocks done, total).

    ``volume``: an input path (opened by each worker; best for clusters) or an array-like. ``request``: the
    pipeline's :class:`~..pipeline.PredictionRequest` (model, tile, TTA, precision, device, threads, norm,
    slices; its thresholds are not used here): the model is a checkpoint name/path, a checkpoint loaded from one,
    a :class:`ModelSpec` or a predictor source, or ``request.predictor`` a ready predictor (see
    :func:`source_of`); ``norm`` defaults to the checkpoint's; ``device="auto"``: each worker's assigned or
    best device. Every predictor runs in the out-of-memory fallback. ``chunks``/``block``: output zarr chunks
    and task blocks in voxels, per axis of the output ((y, x) or (z, y, x)); blocks must be whole chunks.
    ``scheduler``: "threads" (``workers`` threads), "sync", "local" (a :func:`local_cluster` of ``workers``
    processes or one per entry of ``devices``), a scheduler address or a ``distributed.Client``.
    ``variance_output`` receives channel 1 (TTA variance).

    The output appears under its name only when every block is done; until then it lives in
    :func:`work_dir` (kept on error or cancel), and a rerun with the same settings computes only the blocks
    not marked done (``resume=False`` refuses to reuse one). Raises OutputExistsError if ``output`` exists.
    """
    _require_dask()
    import zarr

    from ...io.stacks import EMStack, open_stack

    t_start = time.perf_counter()
    check_scheduler(scheduler)
    output = Path(output)
    outputs = [output] + ([Path(variance_output)] if variance_output is not None else [])
    for path in outputs:
        if not str(path).rstrip("/").lower().endswith(".zarr"):
            raise ValueError(f"{path}: blockwise outputs must be zarr arrays (a name ending in .zarr)")
    check_free(*outputs)
    voxel = None
    if isinstance(volume, (str, Path)):
        stack: EMStack = open_stack(volume)
        voxel = stack.voxel_size
    plan, out_shape = _make_plan(volume, request, variance=variance_output is not None)
    vol = plan.volume.open()
    if len(outputs) > plan.n_out:
        raise ValueError("variance_output needs a predictor with a variance channel (TTA with variance)")
    chunks = tuple(int(c) for c in chunks) if chunks is not None else default_chunks(out_shape)
    block = tuple(int(b) for b in block) if block is not None else default_block(out_shape, chunks)
    check_block(out_shape, chunks, block)
    record = _job_record(plan, vol.shape, vol.dtype, out_shape, chunks, block, len(outputs))

    work = work_dir(output)
    done_dir = work / "done"
    arrays = [work / f"channel{c}.zarr" for c in range(len(outputs))]
    if work.exists():
        if not resume:
            raise OutputExistsError(work, "it holds a partial blockwise run; resume it or delete that folder")
        try:
            old = json.loads((work / "job.json").read_text())
        except (OSError, ValueError):
            old = None
        if old != record:
            raise ValueError(f"{work} holds a partial run with other settings (input, model, tile, norm, chunks, "
                             "blocks or outputs differ); rerun with the same settings or delete that folder")
    else:
        tmp = work.with_name(work.name + f".{os.getpid()}.new")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "done").mkdir(parents=True)
        for c in range(len(outputs)):
            arr = zarr.open(str(tmp / f"channel{c}.zarr"), mode="w-", shape=out_shape, chunks=chunks,
                            dtype="float32", fill_value=0.0)
            if voxel is not None:
                arr.attrs["voxel_size"] = list(voxel)
        (tmp / "job.json").write_text(json.dumps(record, indent=2))
        os.rename(tmp, work)
    plan.outputs = tuple(str(a) for a in arrays)
    plan.done_dir = str(done_dir)

    blocks = plan_blocks(out_shape, block)
    finished = {p.name for p in done_dir.iterdir()}
    todo = [b for b in blocks if b.name not in finished]
    total, skipped = len(blocks), len(blocks) - len(todo)
    tiles = 0
    yield ProgressEvent(skipped, total, "predict", {"resumed": skipped}, unit="blocks")
    done = skipped
    for info in _run_blocks(plan, todo, _block_write_task, scheduler, workers, devices, retries):
        tiles += int(info["tiles"])
        done += 1
        yield ProgressEvent(done, total, "predict", info, unit="blocks")
    missing = [b.name for b in blocks if not (done_dir / b.name).exists()]
    if missing:
        raise RuntimeError(f"{len(missing)} block(s) have no done-marker after the run (e.g. {missing[0]}); "
                           f"rerun to complete them (partial output kept in {work})")
    for arr, dest in zip(arrays, outputs):
        if dest.exists():
            raise OutputExistsError(dest, f"the finished result stays in {arr}")
    for arr, dest in zip(arrays, outputs):
        os.rename(arr, dest)
    shutil.rmtree(work, ignore_errors=True)
    return BlockwiseResult(outputs, total, len(todo), skipped, tiles, time.perf_counter() - t_start)


def _block_write_task(plan: _Plan, block: Block, cancel: Any, *stats: tuple[float, float]) -> dict[str, Any]:
    """Compute ``block``, write it to every output, then drop its done-marker; returns timing info (with a
    ``warning`` when the out-of-memory fallback stepped down during this block, as the pipeline reports it)."""
    import zarr

    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled by the user")
    t0 = time.perf_counter()
    notes = cached_predictor(plan.source).notes
    seen = len(notes)
    data = compute_block(plan, block, stats)
    for c, path in enumerate(plan.outputs):
        arr = zarr.open(path, mode="r+")
        sel = (slice(block.z0, block.z1),) if arr.ndim == 3 else ()
        vals = data[c] if arr.ndim == 3 else data[c, 0]
        arr[(*sel, slice(block.y0, block.y1), slice(block.x0, block.x1))] = vals
    grid = plan.grid(plan.volume.open().shape)
    info = {"block": block.name, "tiles": len(block_tiles(grid, block)) * (block.z1 - block.z0),
            "seconds": time.perf_counter() - t0, "pid": os.getpid()}
    if len(notes) > seen:
        info["warning"] = "; ".join(notes[seen:])
    with contextlib.suppress(OutputExistsError):  # a task run twice (e.g. after a lost worker) is harmless
        atomic_write_bytes(Path(plan.done_dir) / block.name, json.dumps(info).encode())
    return info


def predict_blockwise(volume: Any, output: str | Path, request: PredictionRequest, *,
                      progress: Progress | None = None, **kwargs: Any) -> BlockwiseResult:
    """Run :func:`iter_predict_blockwise` to the end (``progress`` gets the events and may cancel)."""
    return drive(iter_predict_blockwise(volume, output, request, **kwargs), progress)
