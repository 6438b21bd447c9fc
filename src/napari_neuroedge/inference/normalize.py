"""Input intensity normalisation, per 2D slice, as stored with each model (see :class:`NormConfig`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import NormConfig

_SAMPLE_PIXELS = 1 << 20  # percentiles from at most ~1 Mpx of a strided subsample


def dtype_scale(dtype: Any) -> float:
    """Factor mapping the dtype's range to [0, 1]: 1/255 for uint8, 1/65535 for uint16, 1 for floats."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return 1 / 255
    if dtype == np.uint16:
        return 1 / 65535
    return 1.0


def slice_stats(plane: Any, norm: NormConfig) -> tuple[float, float]:
    """(offset, scale) such that ``(x - offset) * scale`` normalises this (y, x) slice."""
    if norm.mode == "percentile":
        h, w = int(plane.shape[0]), int(plane.shape[1])
        step = max(1, int(np.sqrt(h * w / _SAMPLE_PIXELS)))
        sample = np.asarray(plane[::step, ::step], dtype=np.float32)
        lo, hi = np.percentile(sample, [norm.low, norm.high])
        if not np.isfinite(lo) or not np.isfinite(hi):
            raise ValueError("the slice holds NaN or infinite values")
        return float(lo), 1.0 / max(float(hi - lo), 1e-6)
    if norm.mode == "meanstd":
        s = dtype_scale(plane.dtype)
        return norm.mean / s, s / norm.std
    raise ValueError(f"unknown normalisation mode {norm.mode!r}; expected percentile or meanstd")


def apply_stats(block: np.ndarray, stats: tuple[float, float]) -> np.ndarray:
    """Normalise a block of a slice with that slice's stats; float32 out."""
    offset, scale = stats
    return ((np.asarray(block, np.float32) - np.float32(offset)) * np.float32(scale)).astype(np.float32, copy=False)


def normalize_slice(plane: Any, norm: NormConfig) -> np.ndarray:
    """Normalise a whole (y, x) slice to float32."""
    return apply_stats(np.asarray(plane), slice_stats(plane, norm))
