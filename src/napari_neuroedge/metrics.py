"""Evaluation metrics for membrane (boundary) maps and the neuron instances they separate.

Conventions: membrane maps are 2D (H, W) or stacks (Z, H, W); any non-zero value is membrane (1 = membrane,
0 = cell interior). Instance maps are integer label images where 0 means "no cell" (membrane). Stacks are
always evaluated slice by slice (2D), as in the ISBI 2012 challenge.

- :func:`pixel_error`: fraction of (labelled) pixels where the binary maps differ.
- :func:`boundary_prf`: boundary precision / recall / F1 with a distance tolerance.
- :func:`rand_error`: foreground-restricted adapted Rand error (ignores ground-truth label 0).
- :func:`variation_of_information`: split / merge conditional entropies (bits) on ground-truth foreground.
- :func:`instance_scores`: Rand error and VI of the instances one post-processing makes of a prediction.
- :func:`evaluate`: all of the above from a probability or binary prediction and a GT membrane map.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage
from skimage.metrics import adapted_rand_error as _sk_adapted_rand_error
from skimage.metrics import variation_of_information as _sk_variation_of_information
from skimage.segmentation import expand_labels

__all__ = [
    "boundary_prf",
    "default_instances",
    "evaluate",
    "instance_scores",
    "instances_from_membrane",
    "pixel_error",
    "rand_error",
    "to_membrane",
    "variation_of_information",
]

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def _as_stack(arr: np.ndarray, name: str) -> np.ndarray:
    """View a 2D (H, W) or 3D (Z, H, W) array as a 3D stack."""
    a = np.asarray(arr)
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3:
        return a
    raise ValueError(f"{name} must be 2D (H, W) or 3D (Z, H, W), got shape {a.shape}")


def _same_shape(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if np.shape(a) != np.shape(b):
        raise ValueError(f"{names}: shapes differ, {np.shape(a)} vs {np.shape(b)}")


def to_membrane(pred: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Binary membrane map (bool, same shape) from a prediction.

    A floating-point array is a membrane probability: membrane where ``pred >= threshold``. Any other dtype
    (bool, uint8, int) is already a binary map: membrane where ``pred != 0``.
    """
    p = np.asarray(pred)
    if np.issubdtype(p.dtype, np.floating):
        return p >= threshold
    return p != 0


# -------------------------------------------------------------------------------------- pixel error


def pixel_error(pred_membrane: np.ndarray, gt_membrane: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Fraction of labelled pixels where the binary maps (non-zero = membrane) differ, in [0, 1].

    ``mask`` (same shape, non-zero = labelled) restricts the count; with no labelled pixel at all the error
    is 0.0 (nothing can be wrong).
    """
    _same_shape(pred_membrane, gt_membrane, "pixel_error")
    diff = np.asarray(pred_membrane).astype(bool) != np.asarray(gt_membrane).astype(bool)
    if mask is None:
        return float(diff.mean()) if diff.size else 0.0
    _same_shape(mask, gt_membrane, "pixel_error mask")
    labelled = np.asarray(mask).astype(bool)
    n = int(labelled.sum())
    if n == 0:
        return 0.0
    return float(np.count_nonzero(diff & labelled) / n)


# -------------------------------------------------------------------------------------- boundary P/R


def _matched(source: np.ndarray, target: np.ndarray, tolerance: float) -> int:
    """Number of ``source`` pixels with a ``target`` pixel within ``tolerance`` px (Euclidean), 2D bools."""
    if not source.any() or not target.any():
        return 0
    if tolerance <= 0:
        return int(np.count_nonzero(source & target))
    dist = ndimage.distance_transform_edt(~target)  # distance of each pixel to the nearest target pixel
    return int(np.count_nonzero(source & (dist <= tolerance)))


def boundary_prf(
    pred_membrane: np.ndarray, gt_membrane: np.ndarray, tolerance: float = 2.0
) -> dict[str, float]:
    """Boundary precision, recall and F1 with a distance tolerance (pixels, Euclidean).

    A predicted membrane pixel counts as correct if a GT membrane pixel lies within ``tolerance`` px
    (precision = correct / predicted); a GT membrane pixel counts as found if a predicted one lies within
    ``tolerance`` px (recall = found / GT). ``tolerance`` = 0 requires the exact pixel. For a (Z, H, W) stack
    distances are computed per slice and the counts are summed over slices before dividing.

    Edge cases: no predicted and no GT membrane -> precision = recall = f1 = 1.0; otherwise a ratio with an
    empty denominator is 0.0 (empty prediction: precision 0, recall 0; empty GT: precision 0, recall 0), and
    f1 = 0.0 when precision + recall = 0.
    """
    _same_shape(pred_membrane, gt_membrane, "boundary_prf")
    pred = _as_stack(pred_membrane, "pred_membrane").astype(bool)
    gt = _as_stack(gt_membrane, "gt_membrane").astype(bool)
    n_pred = int(pred.sum())
    n_gt = int(gt.sum())
    if n_pred == 0 and n_gt == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    tp_pred = sum(_matched(p, g, tolerance) for p, g in zip(pred, gt))
    tp_gt = sum(_matched(g, p, tolerance) for p, g in zip(pred, gt))
    precision = tp_pred / n_pred if n_pred else 0.0
    recall = tp_gt / n_gt if n_gt else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


# ---------------------------------------------------------------------------------------- instances


def instances_from_membrane(gt_membrane: np.ndarray) -> np.ndarray:
    """uint32 instances: 4-connected components of non-membrane pixels per 2D slice; membrane = 0.

    Accepts (H, W) or (Z, H, W); returns the same shape. Ids start at 1 and are unique across the slices
    of a stack (slice z continues numbering after slice z - 1).
    """
    a = np.asarray(gt_membrane)
    stack = _as_stack(a, "gt_membrane").astype(bool)
    out = np.zeros(stack.shape, dtype=np.uint32)
    offset = 0
    for z, sl in enumerate(stack):
        lab, n = ndimage.label(~sl, structure=_FOUR_CONNECTED)
        if n:
            out[z] = np.where(lab > 0, lab + offset, 0)
            offset += n
    return out.reshape(a.shape)


def default_instances(prob2d: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Default post-processing for :func:`evaluate`: uint32 (H, W) instances from a 2D prediction.

    Cells are the 4-connected components of the non-membrane pixels (``to_membrane(prob2d, threshold)``);
    membrane pixels are then given the label of the nearest cell (:func:`skimage.segmentation.expand_labels`)
    so the segmentation is dense, like a watershed's, and predicted membrane pixels do not form one huge
    "label 0" segment in the Rand / VI scores. An all-membrane slice stays all 0.
    """
    membrane = to_membrane(prob2d, threshold)
    if membrane.ndim != 2:
        raise ValueError(f"default_instances expects a 2D map, got shape {membrane.shape}")
    cells = instances_from_membrane(membrane)
    if cells.any() and not cells.all():
        cells = expand_labels(cells, distance=float(sum(membrane.shape))).astype(np.uint32)
    return cells


# ----------------------------------------------------------------------------------- Rand error / VI


def rand_error(pred_instances: np.ndarray, gt_instances: np.ndarray) -> float:
    """Foreground-restricted adapted Rand error (ISBI 2012 / SNEMI3D), in [0, 1]; 0 is perfect.

    Uses :func:`skimage.metrics.adapted_rand_error`: pixels with GT label 0 are ignored; predicted label 0 is
    an ordinary segment. For (Z, H, W) stacks the error is computed per slice and averaged over the slices
    that contain GT foreground; if none does, returns 0.0.
    """
    _same_shape(pred_instances, gt_instances, "rand_error")
    pred = _as_stack(pred_instances, "pred_instances")
    gt = _as_stack(gt_instances, "gt_instances")
    errors = []
    for p, g in zip(pred, gt):
        if not np.any(g):
            continue
        err, _, _ = _sk_adapted_rand_error(
            np.ascontiguousarray(g).astype(np.int64), np.ascontiguousarray(p).astype(np.int64)
        )
        errors.append(float(err))
    return float(np.mean(errors)) if errors else 0.0


def variation_of_information(pred_instances: np.ndarray, gt_instances: np.ndarray) -> dict[str, float]:
    """Variation of information (bits) restricted to GT foreground (gt != 0): split, merge and total.

    split = H(pred | gt) (over-segmentation), merge = H(gt | pred) (under-segmentation), total = split +
    merge, via :func:`skimage.metrics.variation_of_information`. Stacks: per slice, averaged over the slices
    with GT foreground (all 0.0 if none has any).
    """
    _same_shape(pred_instances, gt_instances, "variation_of_information")
    pred = _as_stack(pred_instances, "pred_instances")
    gt = _as_stack(gt_instances, "gt_instances")
    splits: list[float] = []
    merges: list[float] = []
    for p, g in zip(pred, gt):
        fg = np.asarray(g) != 0
        if not fg.any():
            continue
        split, merge = _sk_variation_of_information(
            np.asarray(g)[fg].astype(np.int64), np.asarray(p)[fg].astype(np.int64)
        )
        splits.append(max(float(split), 0.0))  # clip -1e-17 style round-off
        merges.append(max(float(merge), 0.0))
    split_m = float(np.mean(splits)) if splits else 0.0
    merge_m = float(np.mean(merges)) if merges else 0.0
    return {"split": split_m, "merge": merge_m, "total": split_m + merge_m}


# ------------------------------------------------------------------------------------------ evaluate


def instance_scores(
    pred_prob_or_membrane: np.ndarray,
    gt_membrane: np.ndarray,
    instances_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Rand error and VI of the instances made from each 2D slice of a (H, W) or (Z, H, W) prediction.

    ``instances_fn(slice2d) -> instances2d`` gets a float32 slice: the probability, or the 0/1 membrane map of
    binary (bool/integer) input. ``None`` uses :func:`default_instances` (connected components of the
    non-membrane pixels; a probability is thresholded at ``threshold``, a binary map used as is), so a binary
    map gives the same figures as a 0/1 float map of it. GT instances: :func:`instances_from_membrane`.

    Returns keys ``rand_error``, ``vi_split``, ``vi_merge``, ``vi_total``.
    """
    _same_shape(pred_prob_or_membrane, gt_membrane, "instance_scores")
    pred_stack = _as_stack(np.asarray(pred_prob_or_membrane), "pred_prob_or_membrane")
    if np.issubdtype(pred_stack.dtype, np.floating):
        slices = [s.astype(np.float32, copy=False) for s in pred_stack]
    else:
        slices = [(s != 0).astype(np.float32) for s in pred_stack]
        threshold = 0.5  # the 0/1 map's own threshold, whatever the probability's would be
    if instances_fn is None:
        pred_inst = np.stack([default_instances(s, threshold) for s in slices])
    else:
        pred_inst = np.stack([np.asarray(instances_fn(s)) for s in slices])
    gt_inst = instances_from_membrane(_as_stack(np.asarray(gt_membrane).astype(bool), "gt_membrane"))
    vi = variation_of_information(pred_inst, gt_inst)
    return {"rand_error": rand_error(pred_inst, gt_inst), "vi_split": vi["split"], "vi_merge": vi["merge"],
            "vi_total": vi["total"]}


def evaluate(
    pred_prob_or_membrane: np.ndarray,
    gt_membrane: np.ndarray,
    instances_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    threshold: float = 0.5,
    tolerance: float = 2.0,
) -> dict[str, float]:
    """All metrics for a (H, W) or (Z, H, W) prediction against a GT membrane map (non-zero = membrane).

    ``pred_prob_or_membrane``: a float membrane probability (thresholded at ``threshold``, see
    :func:`to_membrane`) or a bool/integer binary membrane map (used as is). Instances for the Rand error and
    VI: see :func:`instance_scores` (``instances_fn`` None: connected components).

    Returns keys: ``pixel_error``; ``boundary_precision``, ``boundary_recall``, ``boundary_f1`` (at
    ``tolerance`` px); ``boundary_precision_exact``, ``boundary_recall_exact``, ``boundary_f1_exact``
    (tolerance 0); ``rand_error``; ``vi_split``, ``vi_merge``, ``vi_total``.
    """
    _same_shape(pred_prob_or_membrane, gt_membrane, "evaluate")
    pred = np.asarray(pred_prob_or_membrane)
    pred_membrane = to_membrane(pred, threshold)
    gt = np.asarray(gt_membrane).astype(bool)

    tol = boundary_prf(pred_membrane, gt, tolerance=tolerance)
    exact = boundary_prf(pred_membrane, gt, tolerance=0.0)
    return {
        "pixel_error": pixel_error(pred_membrane, gt),
        "boundary_precision": tol["precision"],
        "boundary_recall": tol["recall"],
        "boundary_f1": tol["f1"],
        "boundary_precision_exact": exact["precision"],
        "boundary_recall_exact": exact["recall"],
        "boundary_f1_exact": exact["f1"],
        **instance_scores(pred, gt, instances_fn, threshold),
    }
