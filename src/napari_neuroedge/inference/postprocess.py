"""Boundary probability -> membrane labels and neuron instance labels (scikit-image watershed)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as cc_label
from skimage.segmentation import watershed


def membrane_from_probability(prob: Any, threshold: float = 0.5) -> np.ndarray:
    """uint8 membrane labels (1 = membrane, 0 = elsewhere) from a boundary probability of any shape."""
    return (np.asarray(prob) >= threshold).astype(np.uint8)


def instances_from_probability(prob: np.ndarray, threshold: float = 0.5, seed_distance: float = 2.0,
                               min_seed_size: int = 10) -> np.ndarray:
    """uint32 neuron instances of one (y, x) boundary-probability slice.

    Seeds are the connected parts of the interior (``prob < threshold``) that lie at least ``seed_distance`` px
    from any boundary, so gaps narrower than about twice that do not merge cells; seeds smaller than
    ``min_seed_size`` px are dropped. A watershed of the probability from those seeds assigns every pixel,
    membranes included, to a cell (ids 1..n).
    """
    prob = np.asarray(prob, np.float32)
    if prob.ndim != 2:
        raise ValueError(f"expected a 2D probability map, got shape {prob.shape}")
    interior = prob < threshold
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


def instances_stack(prob: Any, threshold: float = 0.5, **kwargs: Any) -> np.ndarray:
    """Instances of a (y, x) or (z, y, x) probability; ids are unique across slices (uint32)."""
    prob = np.asarray(prob)
    if prob.ndim == 2:
        return instances_from_probability(prob, threshold, **kwargs)
    out = np.zeros(prob.shape, np.uint32)
    offset = 0
    for z in range(prob.shape[0]):
        inst = instances_from_probability(prob[z], threshold, **kwargs)
        out[z] = np.where(inst > 0, inst + offset, 0)
        offset += int(inst.max())
    return out
