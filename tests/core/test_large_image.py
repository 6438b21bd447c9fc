"""Training crops from large images: the seed's windows, read lazily, normalised with whole-slice stats."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from napari_neuroedge.config import NormConfig
from napari_neuroedge.inference.normalize import normalize_slice
from napari_neuroedge.training.dataset import LabelledSlice
from napari_neuroedge.training.large_image import LargeImageCrops, iter_large_crops, large_image_windows


class ReadLog:
    """An array-like that records the size of every read (to prove crops read only their window)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.reads: list[int] = []  # pixels read, per read

    def __getitem__(self, key: Any) -> np.ndarray:
        out = self.data[key]
        self.reads.append(int(np.size(out)))
        return out


@pytest.fixture
def big() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    image = (rng.random((2, 100, 120)) * 60000).astype(np.uint16)
    labels = (rng.random((2, 100, 120)) < 0.2).astype(np.uint8) * 255  # any value > 0 is membrane
    mask = np.zeros((2, 100, 120), np.uint8)
    mask[:, 60:, :40] = 1  # only the bottom-left corner is annotated
    return image, labels, mask


def test_windows_are_grid_plus_corner_tiles() -> None:
    # 100 x 120, tile 48, overlap 16 (stride 32): rows 0, 32, 52 and columns 0, 32, 64, 72 (12 grid tiles),
    # then tiles centred on the interior corners: rows 16, 42 and columns 16, 48, 68 (6 more)
    wins = large_image_windows((100, 120), 48, 16)
    assert len(wins) == 18
    assert wins[:4] == [(None, 0, 0, 48, 48), (None, 0, 32, 48, 48), (None, 0, 64, 48, 48), (None, 0, 72, 48, 48)]
    assert wins[12:] == [(None, y, x, 48, 48) for y in (16, 42) for x in (16, 48, 68)]
    assert large_image_windows((30, 40), 48, 16) == [(None, 0, 0, 30, 40)]  # smaller than a tile: clipped
    assert [w[0] for w in large_image_windows((3, 100, 120), 48, 16, slices=[2])] == [2] * 18


def test_crops_equal_windows_of_the_normalised_slice_and_read_only_their_window(big: Any) -> None:
    image, labels, _ = big
    norm = NormConfig(low=1.0, high=99.0)
    logged = ReadLog(image)
    crops = LargeImageCrops(logged, labels, tile=48, overlap=16, norm=norm, source="big")
    assert len(crops) == 36 and logged.reads == []  # two slices x 18 windows, nothing read yet
    full = [normalize_slice(image[z], norm) for z in range(2)]
    for i in (0, 5, 17, 18, 35):
        z, y, x, h, w = crops.windows[i]
        sl = crops[i]
        assert isinstance(sl, LabelledSlice) and sl.image.dtype == np.float32 and sl.image.shape == (48, 48)
        np.testing.assert_array_equal(sl.image, full[z][y:y + h, x:x + w])
        np.testing.assert_array_equal(sl.label, (labels[z, y:y + h, x:x + w] > 0).astype(np.uint8))
        assert sl.mask is None and sl.meta["slice"] == z and sl.meta["window"] == [y, x, h, w]
    # five 48 x 48 windows, plus each slice's stats sample once (the whole slice: stride 1 below 1 Mpx)
    assert sorted(logged.reads) == [48 * 48] * 5 + [100 * 120] * 2


def test_mask_drops_unlabelled_windows_and_sample_is_reproducible(big: Any) -> None:
    image, labels, mask = big
    crops = LargeImageCrops(image, labels, mask=mask, tile=48, overlap=16, slices=[1])
    # annotated rows 60..99, cols 0..39: windows with y + 48 > 60 and x < 40, i.e. grid rows 32, 52 x columns
    # 0, 32 and corner tiles at rows 16, 42 x column 16
    assert crops.windows == [(1, 32, 0, 48, 48), (1, 32, 32, 48, 48), (1, 52, 0, 48, 48), (1, 52, 32, 48, 48),
                             (1, 16, 16, 48, 48), (1, 42, 16, 48, 48)]
    assert all(c.mask is not None and c.mask.any() for c in crops)
    a = crops.sample(3, np.random.default_rng(1))
    b = crops.sample(3, np.random.default_rng(1))
    assert [c.meta["window"] for c in a] == [c.meta["window"] for c in b]
    assert len({tuple(c.meta["window"]) for c in a}) == 3
    assert len(crops.sample(100)) == 6
    assert len(list(iter_large_crops(image[0], labels[0], tile=48, overlap=16))) == 18


def test_shape_mismatch_is_an_error(big: Any) -> None:
    image, labels, _ = big
    with pytest.raises(ValueError, match="shapes differ"):
        LargeImageCrops(image, labels[:, :50], tile=48, overlap=16)
