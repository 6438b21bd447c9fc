"""Per-slice loss targets computed on the CPU in the data loader (numpy / scipy / scikit-image, no torch).

All inputs are 2D (H, W) labels with 1 (any non-zero value) = membrane and 0 = not membrane; an optional
``mask`` has 1 = labelled, 0 = ignore. Distances are in pixels.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import diamond, skeletonize

__all__ = ["skeleton_tube", "unet_weight_map", "edge_band", "corrected_pixels"]

# The U-Net border term is evaluated exactly wherever the second-nearest cell lies within
# ``_BORDER_REACH_SIGMAS * sigma`` px; farther away it is set to 0 (an error below w0 * exp(-8) ~ 3e-4 * w0).
_BORDER_REACH_SIGMAS = 4.0

# 4-connectivity for cells: two cell pixels touching only diagonally across a 1-px, 8-connected membrane
# line belong to different cells.
_CELL_STRUCTURE = ndi.generate_binary_structure(2, 1)


def _check_2d(name: str, arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2D (H, W), got shape {arr.shape}")
    return arr


def skeleton_tube(label: np.ndarray, radius: int = 2) -> np.ndarray:
    """Skeleton Recall target (Kirchhoff et al. 2024): the membrane skeleton dilated by a diamond.

    label: (H, W), non-zero = membrane. radius: diamond footprint radius in px (0 = the bare skeleton).
    Returns float32 (H, W) in {0, 1}.
    """
    label = _check_2d("label", label)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    skel = skeletonize(label > 0)
    if radius > 0 and skel.any():
        skel = ndi.binary_dilation(skel, structure=diamond(radius).astype(bool))
    return skel.astype(np.float32)


def _class_balance(membrane: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    """w_c = 1 / (n_classes_present * freq(class of the pixel)) on labelled pixels, 0 elsewhere.

    With both classes present this is the "0.5 / freq" balance, whose mean over the labelled pixels is
    exactly 1; with one class present every labelled pixel gets 1.
    """
    w = np.zeros(membrane.shape, dtype=np.float64)
    n = int(labelled.sum())
    if n == 0:
        return w
    pos = membrane & labelled
    neg = ~membrane & labelled
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    n_classes = int(n_pos > 0) + int(n_neg > 0)
    if n_pos:
        w[pos] = n / (n_classes * n_pos)
    if n_neg:
        w[neg] = n / (n_classes * n_neg)
    return w


def _two_nearest_cell_distances(cells: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Distances (px) from every pixel to its nearest (d1) and second-nearest (d2) cell.

    Each cell's exact Euclidean distance map is computed only inside its bounding box grown by ``reach``
    (every pixel closer than ``reach`` to the cell lies there); outside that box the distance counts as inf.
    """
    h, w = cells.shape
    d1 = np.full((h, w), np.inf)
    d2 = np.full((h, w), np.inf)
    r = int(math.ceil(reach))
    for idx, sl in enumerate(ndi.find_objects(cells), start=1):
        if sl is None:
            continue
        ys = slice(max(sl[0].start - r, 0), min(sl[0].stop + r, h))
        xs = slice(max(sl[1].start - r, 0), min(sl[1].stop + r, w))
        dist = ndi.distance_transform_edt(cells[ys, xs] != idx)
        b1 = d1[ys, xs]
        b2 = d2[ys, xs]
        # new second-nearest = min(old second, max(old nearest, new)); new nearest = min(old nearest, new)
        np.minimum(b2, np.maximum(b1, dist), out=b2)
        np.minimum(b1, dist, out=b1)
    return d1, d2


def unet_weight_map(
    label: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """U-Net pixel weight map (Ronneberger et al. 2015): w = w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2)).

    label: (H, W), non-zero = membrane. Cells are the 4-connected components of the labelled non-membrane
    pixels; d1 / d2 are the Euclidean distances (px) to the nearest / second-nearest cell. The border term is
    added on labelled membrane pixels only and is 0 with fewer than two cells. w_c balances the classes:
    w_c = 1 / (n_classes * freq(class)) over the labelled pixels, i.e. 0.5 / freq with both classes present,
    so the mean of w_c over labelled pixels is 1. mask: optional (H, W), 1 = labelled; ignored pixels get
    weight 0. Returns float32 (H, W).
    """
    label = _check_2d("label", label)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    membrane = label > 0
    if mask is None:
        labelled = np.ones(label.shape, dtype=bool)
    else:
        labelled = _check_2d("mask", mask) > 0
        if labelled.shape != label.shape:
            raise ValueError(f"mask shape {labelled.shape} != label shape {label.shape}")

    weight = _class_balance(membrane, labelled)
    cells, n_cells = ndi.label(~membrane & labelled, structure=_CELL_STRUCTURE)
    if n_cells >= 2 and w0 != 0:
        d1, d2 = _two_nearest_cell_distances(cells, _BORDER_REACH_SIGMAS * sigma)
        where = membrane & labelled & np.isfinite(d2)
        total = d1[where] + d2[where]
        weight[where] += w0 * np.exp(-(total * total) / (2.0 * sigma * sigma))
    return weight.astype(np.float32)


def edge_band(label: np.ndarray, width: int = 3) -> np.ndarray:
    """Pixels "near but not on" the true edge: non-membrane pixels <= ``width`` px (Euclidean) from membrane.

    label: (H, W), non-zero = membrane. Returns uint8 (H, W) in {0, 1}; all 0 when there is no membrane.
    """
    label = _check_2d("label", label)
    if width < 0:
        raise ValueError(f"width must be >= 0, got {width}")
    membrane = label > 0
    if width == 0 or not membrane.any():
        return np.zeros(label.shape, dtype=np.uint8)
    dist = ndi.distance_transform_edt(~membrane)  # px to the nearest membrane pixel, 0 on membrane
    return ((dist > 0) & (dist <= width)).astype(np.uint8)


def corrected_pixels(label: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Where the user's corrected label differs from the model's prediction.

    label: (H, W), non-zero = membrane. predicted: (H, W) binary prediction (non-zero = membrane), or a
    floating-point probability map, which is thresholded at 0.5 (>= 0.5 = membrane). Returns bool (H, W).
    """
    label = _check_2d("label", label)
    predicted = _check_2d("predicted", predicted)
    if label.shape != predicted.shape:
        raise ValueError(f"predicted shape {predicted.shape} != label shape {label.shape}")
    pred = predicted >= 0.5 if np.issubdtype(predicted.dtype, np.floating) else predicted > 0
    return (label > 0) != pred
