"""Training crops from images too big to load: the seed's overlapping tiles plus tiles centred on tile corners.

:class:`LargeImageCrops` is a lazy ``Sequence[LabelledSlice]`` over a 2D (y, x) or 3D (z, y, x) array-like
(np.memmap, zarr, TIFF-zarr store) and its labels: item i reads only window i (``tile`` x ``tile`` px, clipped
to the image) of the image, the labels and the optional mask, and normalises it with the stats of the *whole*
slice (computed once per slice from a strided subsample, as in inference), so a crop equals the same window of
the fully loaded, normalised slice. Memory is O(tile^2) per crop, whatever the image size.

The windows come from :func:`~napari_neuroedge.training.augment.crop_windows_with_corners`. Fine-tuning
(:func:`~napari_neuroedge.training.loop.iter_fit`) precomputes targets for every slice it is given, so pass
a bounded subset, e.g. ``crops.sample(64, rng)``, rather than all windows of a 10k^2 slice.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np

from ..config import NormConfig
from ..inference.normalize import apply_stats, slice_stats
from ..inference.tiling import PlaneView
from .augment import crop_windows_with_corners
from .labelled import LabelledSlice


def large_image_windows(shape: Sequence[int], tile: int, overlap: int, slices: Sequence[int] | None = None
                        ) -> list[tuple[int | None, int, int, int, int]]:
    """Windows (z, y, x, h, w) for an image of ``shape`` ((y, x): z is None), clipped to the image.

    Per slice, the order of :func:`crop_windows_with_corners` (grid tiles, then corner-centred tiles).
    """
    if len(shape) not in (2, 3):
        raise ValueError(f"expected a 2D image or 3D stack, got shape {tuple(shape)}")
    H, W = int(shape[-2]), int(shape[-1])
    zs: Sequence[int | None] = [None] if len(shape) == 2 else (range(int(shape[0])) if slices is None else slices)
    corners = crop_windows_with_corners(H, W, tile, overlap)
    return [(z, y, x, min(tile, H - y), min(tile, W - x)) for z in zs for (y, x) in corners]


class LargeImageCrops(Sequence[LabelledSlice]):
    """Lazily read training crops of a large image; ``len`` windows, item i -> a :class:`LabelledSlice`.

    ``image``: (y, x) or (z, y, x) array-like, any dtype; ``labels``: same shape, membrane where > 0 (uint8
    1 = membrane convention); ``mask``: optional, same shape, 1 = labelled, 0 = ignore. ``tile``/``overlap``
    in px (overlap < tile). ``slices``: the z indices to use (default all). With ``drop_unlabelled`` and a
    mask, windows whose mask is all 0 are left out (found by reading the mask window by window once).
    ``norm`` is the model's normalisation (per whole slice, as at inference).
    """

    def __init__(self, image: Any, labels: Any, *, tile: int = 512, overlap: int = 128,
                 norm: NormConfig | None = None, mask: Any = None, slices: Sequence[int] | None = None,
                 drop_unlabelled: bool = True, source: str = "") -> None:
        shape = tuple(int(s) for s in image.shape)
        if tuple(int(s) for s in labels.shape) != shape:
            raise ValueError(f"image {shape} and labels {tuple(labels.shape)} shapes differ")
        if mask is not None and tuple(int(s) for s in mask.shape) != shape:
            raise ValueError(f"image {shape} and mask {tuple(mask.shape)} shapes differ")
        self.image, self.labels, self.mask = image, labels, mask
        self.tile, self.overlap = int(tile), int(overlap)
        self.norm = norm or NormConfig()
        self.source = source
        self._stats: dict[int | None, tuple[float, float]] = {}
        windows = large_image_windows(shape, self.tile, self.overlap, slices)
        if mask is not None and drop_unlabelled:
            windows = [w for w in windows if np.any(self._read(mask, w))]
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    @overload
    def __getitem__(self, i: int) -> LabelledSlice: ...

    @overload
    def __getitem__(self, i: slice) -> list[LabelledSlice]: ...

    def __getitem__(self, i: int | slice) -> LabelledSlice | list[LabelledSlice]:
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        return self.crop(self.windows[i])

    def __iter__(self) -> Iterator[LabelledSlice]:
        for w in self.windows:
            yield self.crop(w)

    @staticmethod
    def _read(data: Any, window: tuple[int | None, int, int, int, int]) -> np.ndarray:
        z, y, x, h, w = window
        return PlaneView(data, z)[y:y + h, x:x + w]

    def stats(self, z: int | None) -> tuple[float, float]:
        """(offset, scale) normalisation of slice ``z`` (None for a 2D image), computed once."""
        if z not in self._stats:
            self._stats[z] = slice_stats(PlaneView(self.image, z), self.norm)
        return self._stats[z]

    def crop(self, window: tuple[int | None, int, int, int, int]) -> LabelledSlice:
        """Read one window (z, y, x, h, w) -> LabelledSlice with float32 image, uint8 label/mask, meta."""
        z, y, x, h, w = window
        image = apply_stats(self._read(self.image, window), self.stats(z))
        label = (self._read(self.labels, window) > 0).astype(np.uint8)
        mask = None if self.mask is None else (self._read(self.mask, window) > 0).astype(np.uint8)
        meta = {"source": self.source, "slice": z, "window": [int(y), int(x), int(h), int(w)],
                "name": f"{self.source or 'image'}[{'' if z is None else f'{z}, '}{y}:{y + h}, {x}:{x + w}]"}
        return LabelledSlice(image, label, mask, meta=meta)

    def sample(self, n: int, rng: np.random.Generator | None = None) -> list[LabelledSlice]:
        """``n`` distinct windows drawn at random (all of them, shuffled, if n >= len), read now."""
        rng = rng or np.random.default_rng(0)
        n = min(int(n), len(self))
        return [self.crop(self.windows[int(i)]) for i in rng.permutation(len(self))[:n]]


def iter_large_crops(image: Any, labels: Any, **kwargs: Any) -> Iterator[LabelledSlice]:
    """Yield the crops of :class:`LargeImageCrops` one by one (same keyword arguments)."""
    yield from LargeImageCrops(image, labels, **kwargs)
