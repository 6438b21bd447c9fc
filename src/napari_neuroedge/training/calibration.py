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

from .labelled import labelled_pixels

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.arange(0.30, 0.701, 0.05), 2))
#: Instance seed thresholds tried on held-out pixels (lowest mean adapted Rand error wins).
SEED_THRESHOLDS: tuple[float, ...] = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45)
#: Held-out Rand errors within this fraction of the lowest (or 1e-4) are ties: a few hundred rows cannot tell them
#: apart, and moving the parent's seed threshold on such a difference measured worse on other slices (VNC: 0.4
#: won by 1e-6 over 0.3 on the held-out band, and merged more neurons on slices 10-14).
SEED_TIE_TOLERANCE = 0.02


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


def choose_seed_threshold(rand_by_seed: dict[float, float], parent_seed: float) -> float:
    """The seed threshold with the lowest held-out Rand error, where those within :data:`SEED_TIE_TOLERANCE` of
    the lowest count as ties, won by the one nearest the parent's ``parent_seed``."""
    best = min(rand_by_seed.values())
    tied = [t for t, e in rand_by_seed.items() if e <= best + max(SEED_TIE_TOLERANCE * best, 1e-4)]
    return min(tied, key=lambda t: (abs(t - parent_seed), t))


def seed_threshold_sweep(probs: Sequence[np.ndarray], slices: Sequence[Any],
                         thresholds: Sequence[float] = SEED_THRESHOLDS) -> dict[float, float]:
    """{seed threshold: mean adapted Rand error of the watershed instances of ``probs`` ((H, W) each) against the
    neurons of ``slices``' labels (LabelledSlice-like: ``label``, ``mask``), on their labelled pixels only}."""
    from ..inference.postprocess import instances_from_probability
    from ..metrics import instances_from_membrane, rand_error

    gts = [np.where(labelled_pixels(s), instances_from_membrane(s.label), 0) for s in slices]
    return {float(t): float(np.mean([rand_error(instances_from_probability(p, t), g) for p, g in zip(probs, gts)]))
            for t in thresholds}


def calibrate_thresholds(probs: Sequence[np.ndarray], slices: Sequence[Any], parent_seed: float
                         ) -> tuple[float, float, dict[float, float], dict[float, float]]:
    """(membrane threshold, seed threshold, pixel error by threshold, Rand error by seed threshold) of the
    probabilities ``probs`` against the labels of ``slices`` (only their labelled pixels): the membrane threshold
    with the lowest pixel error, the seed threshold by :func:`choose_seed_threshold` (ties go to ``parent_seed``)."""
    errors = pixel_error_by_threshold(np.concatenate([p.ravel() for p in probs]),
                                      np.concatenate([s.label.ravel() for s in slices]),
                                      mask=np.concatenate([labelled_pixels(s).ravel() for s in slices]))
    seeds = seed_threshold_sweep(probs, slices)
    return choose_threshold(errors), choose_seed_threshold(seeds, parent_seed), errors, seeds
