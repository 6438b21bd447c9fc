"""One labelled training slice in memory: :class:`LabelledSlice` (below the readers that make them, so the
large-image crop reader and the folder readers of :mod:`.dataset` both build them without importing each
other)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class LabelledSlice:
    """One training slice: ``image`` float32 (H, W) normalised; ``label`` uint8 1 = membrane."""

    image: np.ndarray
    label: np.ndarray
    mask: np.ndarray | None = None
    corrected: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image.shape != self.label.shape:
            raise ValueError(f"image {self.image.shape} and label {self.label.shape} shapes differ"
                             f" ({self.meta.get('name', 'unnamed slice')})")
        for name in ("mask", "corrected"):
            arr = getattr(self, name)
            if arr is not None and arr.shape != self.image.shape:
                raise ValueError(f"{name} {arr.shape} and image {self.image.shape} shapes differ")


def labelled_pixels(sl: Any) -> np.ndarray:
    """(H, W) bool: the pixels of ``sl`` (a :class:`LabelledSlice` or anything with ``label`` and ``mask``) that
    carry a label: its mask where it has one, else all of them."""
    return np.ones(sl.label.shape, bool) if sl.mask is None else np.asarray(sl.mask) > 0
