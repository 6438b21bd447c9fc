"""Boundary probability -> membrane labels and neuron instance labels (scikit-image watershed)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as cc_label
from skimage.segmentation import watershed

from ..config import SEED_THRESHOLD


def membrane_from_probability(prob: Any, threshold: float = 0.5) -> np.ndarray:
    """uint8 membrane labels (1 = membrane, 0 = elsewhere) from a boundary probability of any shape."""
    return (np.asarray(prob) >= threshold).astype(np.uint8)


def instances_from_probability(prob: np.ndarray, seed_threshold: float = SEED_THRESHOLD, seed_distance: float = 2.0,
                               min_seed_size: int = 10) -> np.ndarray:
    """uint32 neuron instances of one (y, x) boundary-probability slice.

    Seeds are the connected parts of the confident interior (``prob < seed_threshold``) that lie at least
    ``seed_distance`` px from any less confident pixel, so a gap in a membrane narrower than
    ``2 * seed_distance - 1`` px does not merge cells; seeds smaller than ``min_seed_size`` px are dropped.
    A watershed of the probability from those seeds assigns every pixel, membranes included, to a cell
    (ids 1..n). Independent of the membrane threshold: moving that changes the membrane labels, not the cells.
    """
    prob = np.asarray(prob, np.float32)
    if prob.ndim != 2:
        raise ValueError(f"expected a 2D probability map, got shape {prob.shape}")
    interior = prob < seed_threshold
    dist = ndi.distance_transform_edt(interior)
    seeds = cc_label(dist >= seed_distance, connectivity=1)
    if min_seed_size > 1 and seeds.max() > 0:
        sizes = np.bincount(seeds.ravel())
        small = sizes < min_seed_size
        small[0] = False
        seeds[small[seeds]] = 0
        seeds = cc_label(seeds > 0, connectivity=1)
    if seeds.max() == 0:
        return np.ones(prob.shape, np.uint32)
    # ties in flat regions are broken towards cell centres
    elevation = prob - 1e-3 * dist / (dist.max() + 1e-6)
    return watershed(elevation, seeds).astype(np.uint32)


def instances_from_distance(prob: np.ndarray, threshold: float = 0.5, sigma: float = 2.0, h: float = 1.0,
                            alpha: float = 0.9, min_seed_size: int = 1) -> np.ndarray:
    """uint32 neuron instances of one (y, x) boundary-probability slice, seeded at cell centres rather than on
    the confident interior (the distance-transform watershed of elf / PlantSeg, re-derived here with scipy and
    scikit-image).

    The distance (px) of every pixel to the nearest boundary pixel (``prob >= threshold``) is smoothed
    (Gaussian, ``sigma`` px); its h-maxima (``h`` px of prominence) are the seeds, so two cells joined by a gap
    in their membrane still get a seed each: the gap is a saddle of the distance, not a bridge of the interior.
    A watershed of ``alpha * prob + (1 - alpha) * (1 - distance / max)`` from the seeds fills the slice, so the
    border between two such cells runs through the gap's narrowest place. Measured against
    :func:`instances_from_probability` in ``benchmarks/bench_correction_loop.py`` (issue 23).
    """
    from skimage.morphology import h_maxima

    prob = np.asarray(prob, np.float32)
    if prob.ndim != 2:
        raise ValueError(f"expected a 2D probability map, got shape {prob.shape}")
    dist = ndi.distance_transform_edt(prob < threshold).astype(np.float32)
    if not dist.any():
        return np.ones(prob.shape, np.uint32)
    smooth = ndi.gaussian_filter(dist, sigma) if sigma > 0 else dist
    seeds = cc_label(h_maxima(smooth, h) > 0, connectivity=2)
    if min_seed_size > 1 and seeds.max() > 0:
        sizes = np.bincount(seeds.ravel())
        small = sizes < min_seed_size
        small[0] = False
        seeds[small[seeds]] = 0
    if seeds.max() == 0:
        return np.ones(prob.shape, np.uint32)
    elevation = alpha * prob + (1.0 - alpha) * (1.0 - smooth / smooth.max())
    return watershed(elevation, seeds).astype(np.uint32)


def instance_dtype(volume_shape: tuple[int, ...]) -> np.dtype:
    """uint32 where :func:`stack_instance_ids` fits in it for a (z, y, x) or (y, x) volume, else uint64."""
    z = int(volume_shape[0]) if len(volume_shape) == 3 else 1
    plane = int(volume_shape[-2]) * int(volume_shape[-1])
    return np.dtype(np.uint32) if z * plane < 2**32 else np.dtype(np.uint64)


def stack_instance_ids(cells: np.ndarray, z: int, volume_shape: tuple[int, ...]) -> np.ndarray:
    """Ids unique across a whole stack: cell ``c`` (1..n) of slice ``z`` becomes ``z * H * W + c``; 0 stays 0.

    A slice has fewer cells than pixels, so no two slices' ids can collide at any cell count, whichever
    slices are predicted and in which order (the CLI's whole stack and the GUI's slice at a time give the same
    ids). The dtype is :func:`instance_dtype` of the volume (uint64 only where uint32 cannot hold the ids).
    """
    dtype = instance_dtype(volume_shape)
    plane = int(volume_shape[-2]) * int(volume_shape[-1])
    cells = np.asarray(cells)
    if cells.size and int(cells.max()) >= plane + 1:
        raise ValueError(f"slice has {int(cells.max())} cells, more than its {plane} pixels")
    return np.where(cells > 0, cells.astype(dtype) + dtype.type(int(z) * plane), 0).astype(dtype)
