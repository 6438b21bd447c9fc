"""Blockwise prediction with Dask: the same overlap-tile inference, split into independent tasks over blocks.

A *block* is a box of output voxels (whole slices in z, a rectangle in y/x) made of whole output zarr chunks.
Each block task reads the input window its tiles need (the block plus a tile-aligned halo, mirror-indexed at
the image border), runs the tiles of the **global** tile grid that intersect the block (the very grid that
:func:`~napari_neuroedge.inference.predict.iter_predict` uses, in the same row-major order), blends them with
the same stitch kernel (:mod:`..stitch`) and writes the finished block into the output zarr array in one go. Because every output
pixel sees the same tiles, the same weights, the same summation order and the same per-slice normalisation
(computed once per slice, up front, from the whole slice), the result equals the single-process run: bit for
bit when blocks span whole slice widths (the batches are then the same too) or the predictor's output per
tile does not depend on the rest of its batch; otherwise within float round-off (~1e-7) for torch models,
whose kernels can vary with the batch size. The price is that tiles straddling a block border are run by both
blocks: about ``(B + t) / B`` per split axis for blocks of B px and tiles of t px (none when blocks are whole
slices, the default up to 4096 px).

Fault tolerance: a finished block is written with the zarr array API (each chunk file is replaced atomically
by the store) and only then marked done by a file in ``.NAME.blockwise/done/``. A rerun with the same settings
computes only the blocks without a marker; when all are done the array is moved to its final name and the
work folder removed. Each worker process loads the model once (a per-process cache keyed by checkpoint hash,
device and settings). Multi-GPU: :func:`local_cluster` with ``devices=["cuda:0", "cuda:1", ...]`` starts one
worker process per device with ``CUDA_VISIBLE_DEVICES`` set for it.

Schedulers: ``"threads"`` (dask's threaded scheduler, in this process), ``"sync"``, ``"local"`` (a
:func:`local_cluster` started for the run), a scheduler address (``tcp://host:8786``) or a
``distributed.Client``. Dask is an optional dependency (``pip install napari-neuroedge[dask]``).

Modules: :mod:`.sources` (predictor sources, volume references and their per-process caches), :mod:`.geometry`
(blocks and their tiles), :mod:`.plan` (what a block task computes), :mod:`.job` (the resumable job),
:mod:`.scheduling` (Dask clusters and running tasks), :mod:`.lazy` (lazy dask arrays). Everything public is
importable from here.
"""

from __future__ import annotations

from ..tiling import tiles_in_range
from .geometry import (DEFAULT_BLOCK, DEFAULT_CHUNK, Block, block_tiles, check_block, default_block,
                       default_chunks, plan_blocks)
from .job import WORK_SUFFIX, BlockwiseResult, iter_predict_blockwise, predict_blockwise, work_dir
from .lazy import lazy_array, predict_dask
from .plan import compute_block
from .scheduling import check_scheduler, dask_client, local_cluster, worker_envs
from .sources import (DEVICE_ENV, InProcessSource, ModelSpec, PredictorSource, VolumeRef, as_source,
                      cached_predictor, clear_predictor_cache, load_count, source_of, volume_ref, worker_device)

__all__ = ["DEFAULT_BLOCK", "DEFAULT_CHUNK", "DEVICE_ENV", "WORK_SUFFIX", "Block", "BlockwiseResult",
           "InProcessSource", "ModelSpec", "PredictorSource", "VolumeRef", "as_source", "block_tiles", "cached_predictor",
           "check_block", "check_scheduler", "clear_predictor_cache", "compute_block", "dask_client",
           "default_block", "default_chunks", "iter_predict_blockwise", "lazy_array", "load_count", "local_cluster",
           "plan_blocks", "predict_blockwise", "predict_dask", "source_of", "tiles_in_range", "volume_ref", "work_dir",
           "worker_device", "worker_envs"]
