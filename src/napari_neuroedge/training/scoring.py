"""Held-out scores of one predicted slice: on all its held-out pixels, and where the user disagreed.

A validation slice (:func:`~napari_neuroedge.training.holdout.split_holdout`) is predicted whole and scored on
the pixels of its ``mask``: pixel error, boundary precision / recall / F1 (2 px; a predicted membrane pixel counts
where it lies in the mask, its match may lie anywhere) and the adapted Rand error of the instances (the labels'
neurons restricted to the mask). Where the slice knows which pixels the user changed (``corrected``), the same
measures on the pixels within :data:`NEAR_PX` of a change (``*_changed`` keys) and ``changed_px``, the changed
pixels the held-out part holds: a held-out set that is 99.7% the parent's own prediction says nothing about the
parent, the part the user corrected does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from ..metrics import instances_from_membrane, pixel_error, rand_error
from .labelled import LabelledSlice, labelled_pixels

#: Pixels within this distance (px) of a pixel the user changed count as "near the changes".
NEAR_PX = 3
#: Boundary tolerance (px) of the held-out F1.
TOLERANCE = 2.0


class BoundaryMatch:
    """Which predicted and which true membrane pixels of a slice have a counterpart within ``tolerance`` px;
    :meth:`prf` counts them inside any region, so a slice's distance transforms serve all its regions."""

    def __init__(self, membranes: np.ndarray, label: np.ndarray, tolerance: float = TOLERANCE) -> None:
        self.pred, self.gt = np.asarray(membranes) > 0, np.asarray(label) > 0
        self.pred_ok = self.pred & (ndi.distance_transform_edt(~self.gt) <= tolerance) if self.gt.any() else \
            np.zeros_like(self.pred)
        self.gt_ok = self.gt & (ndi.distance_transform_edt(~self.pred) <= tolerance) if self.pred.any() else \
            np.zeros_like(self.gt)

    def prf(self, region: np.ndarray | None = None, window: tuple[slice, slice] | None = None) -> dict[str, float]:
        """Boundary precision, recall and F1 counted inside the bool ``region`` (None = everywhere) within
        ``window`` (None = the whole slice), with :func:`~napari_neuroedge.metrics.boundary_prf`'s edge cases."""
        w = (slice(None), slice(None)) if window is None else window
        r = np.ones(self.pred[w].shape, bool) if region is None else np.asarray(region)[w]
        n_pred, n_gt = int(np.count_nonzero(self.pred[w] & r)), int(np.count_nonzero(self.gt[w] & r))
        if n_pred == 0 and n_gt == 0:
            return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
        p = np.count_nonzero(self.pred_ok[w] & r) / n_pred if n_pred else 0.0
        rc = np.count_nonzero(self.gt_ok[w] & r) / n_gt if n_gt else 0.0
        return {"precision": p, "recall": rc, "f1": 2 * p * rc / (p + rc) if p + rc > 0 else 0.0}


def region_rand(cells: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float | None:
    """Adapted Rand error of ``cells`` against the true neurons ``truth`` inside the bool ``region`` (None
    where the region holds no neuron pixel)."""
    gt = np.where(region, truth, 0)
    return rand_error(cells, gt) if gt.any() else None


def near_changes(sl: LabelledSlice) -> np.ndarray | None:
    """bool (H, W): the held-out pixels within :data:`NEAR_PX` of a pixel the user changed (None when the
    changes are unknown)."""
    if sl.corrected is None:
        return None
    changed = np.asarray(sl.corrected) > 0
    near = ndi.binary_dilation(changed, iterations=NEAR_PX) if changed.any() else changed
    return near & labelled_pixels(sl)


def score_slice(membranes: np.ndarray, cells: np.ndarray, sl: LabelledSlice) -> dict[str, float]:
    """Pixel error, boundary P/R/F1 (2 px) and adapted Rand error of one slice's predicted ``membranes`` (uint8)
    and instance ``cells`` on the held-out pixels of ``sl`` (its mask), plus ``changed_px`` and the
    ``*_changed`` measures near the user's changes where ``sl`` knows them (see the module docstring)."""
    mask = labelled_pixels(sl)
    match = BoundaryMatch(membranes, sl.label)
    truth = instances_from_membrane(sl.label)
    rand = region_rand(cells, truth, mask)
    out = {"pixel_error": pixel_error(membranes, sl.label, mask), **match.prf(mask),
           "rand_error": 0.0 if rand is None else rand}
    near = near_changes(sl)
    if near is not None:
        out["changed_px"] = float(np.count_nonzero((np.asarray(sl.corrected) > 0) & mask))
        if out["changed_px"] > 0:
            rand_near = region_rand(cells, truth, near)
            out.update({"pixel_error_changed": pixel_error(membranes, sl.label, near),
                        "f1_changed": match.prf(near)["f1"],
                        "rand_error_changed": 0.0 if rand_near is None else rand_near})
    return out


def mean_scores(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of :func:`score_slice` rows key by key, over the rows that have the key; ``changed_px`` summed."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: float((np.sum if k == "changed_px" else np.mean)([r[k] for r in rows if k in r])) for k in keys}
