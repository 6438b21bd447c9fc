"""Choose a model's membrane threshold on labelled slices (what StarDist's ``optimize_thresholds`` does for its
probability threshold), so ``predict`` draws membranes as thick as the labels it was checked against.

A model trained with recall-favouring losses (soft F1, Skeleton Recall) draws membranes a little thick: its
pixel error is lowest above 0.5. The chosen threshold is stored in the checkpoint (``Checkpoint.threshold``)
and used by default wherever that model predicts; instances do not depend on it (their seeds have their own
threshold). Choose it on training slices, never on the slices you report.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import numpy as np

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.arange(0.30, 0.701, 0.05), 2))


def pixel_error_by_threshold(prob: Any, membrane: Any, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                             mask: Any = None) -> dict[float, float]:
    """{threshold: pixel error of ``prob >= threshold`` against ``membrane``} over the pixels where ``mask``.

    ``prob``: float boundary probability, any shape; ``membrane``: same shape, non-zero = membrane;
    ``mask``: same shape, non-zero = labelled (default: all pixels).
    """
    p = np.asarray(prob, np.float32)
    gt = np.asarray(membrane) != 0
    if p.shape != gt.shape:
        raise ValueError(f"probability {p.shape} and labels {gt.shape} shapes differ")
    if mask is not None:
        keep = np.asarray(mask) != 0
        if keep.shape != p.shape:
            raise ValueError(f"mask {keep.shape} and probability {p.shape} shapes differ")
        p, gt = p[keep], gt[keep]
    else:
        p, gt = p.ravel(), gt.ravel()
    if p.size == 0:
        raise ValueError("no labelled pixels to calibrate on")
    if len(thresholds) == 0:
        raise ValueError("no thresholds to try")
    # errors at t: membrane pixels below t + background pixels at or above t, from the sorted probabilities
    mem, bg = np.sort(p[gt]), np.sort(p[~gt])
    out = {}
    for t in map(float, thresholds):
        if not 0.0 < t < 1.0:
            raise ValueError(f"thresholds must lie strictly between 0 and 1, got {t}")
        missed = np.searchsorted(mem, t, side="left")
        extra = bg.size - np.searchsorted(bg, t, side="left")
        out[round(t, 6)] = float((missed + extra) / p.size)
    return out


def choose_threshold(errors: dict[float, float]) -> float:
    """The threshold with the lowest pixel error; ties go to the one nearest 0.5."""
    return min(errors, key=lambda t: (errors[t], abs(t - 0.5)))


def iter_calibrate(image: Any, labels: Any, request: Any, membrane_value: int = 1,
                   thresholds: Sequence[float] = DEFAULT_THRESHOLDS, record: dict[str, Any] | None = None
                   ) -> Generator[Any, None, tuple[Any, dict[float, float]]]:
    """Generator: predict ``image`` ((y, x) or (z, y, x)) as ``request`` (a
    :class:`~napari_neuroedge.inference.pipeline.PredictionRequest` with a loaded checkpoint as its model) says,
    sweep ``thresholds`` against ``labels == membrane_value`` on the predicted slices; yields the pipeline's
    ProgressEvents and returns (a copy of the checkpoint with the best threshold, no optimiser state and the sweep
    plus ``record`` in its provenance, {threshold: pixel error}).
    """
    from dataclasses import replace

    from ..inference.pipeline import OutputPlan, iter_run, output_shape

    if tuple(image.shape) != tuple(labels.shape):
        raise ValueError(f"image {tuple(image.shape)} and labels {tuple(labels.shape)} shapes differ")
    ckpt = request.model
    prob = np.zeros(output_shape(image.shape, request.slices), np.float32)
    outcome = yield from iter_run(image, request, OutputPlan(probability=prob))
    if outcome.slices is not None:  # read only the slices calibrated on
        truth = np.stack([np.asarray(labels[z]) for z in outcome.slices])
    else:
        truth = np.asarray(labels[...])
    errors = pixel_error_by_threshold(prob, truth == membrane_value, thresholds)
    best = choose_threshold(errors)
    entry = {**(record or {}), "tta": request.tta.n, "threshold": best,
             "pixel_error_by_threshold": {f"{t:g}": round(e, 6) for t, e in errors.items()}}
    calibrated = replace(ckpt, threshold=best, optimizer=None, provenance={**ckpt.provenance, "calibration": entry})
    return calibrated, errors
