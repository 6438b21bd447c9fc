"""Tests for the CPU-side loss targets (skeleton tube, U-Net weight map, edge band, corrected pixels)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_neuroedge.training.targets import corrected_pixels, edge_band, skeleton_tube, unet_weight_map


# ----------------------------------------------------------------------------------------- skeleton tube
def test_skeleton_tube_of_straight_line_is_diamond_dilation() -> None:
    label = np.zeros((32, 32), dtype=np.uint8)
    row, c0, c1 = 16, 8, 23  # 1-px horizontal line, 16 px long
    label[row, c0 : c1 + 1] = 1
    tube = skeleton_tube(label, radius=2)
    assert tube.dtype == np.float32
    assert set(np.unique(tube)) == {0.0, 1.0}
    # by hand: every pixel within L1 distance 2 of the segment
    expected = np.zeros_like(tube)
    for r in range(32):
        for c in range(32):
            dc = max(c0 - c, 0, c - c1)
            if abs(r - row) + dc <= 2:
                expected[r, c] = 1.0
    np.testing.assert_array_equal(tube, expected)
    # 5 rows along the 16 columns, plus 3 + 1 pixels beyond each end
    assert int(tube.sum()) == 5 * 16 + 2 * (3 + 1) == 88


def test_skeleton_tube_radius_zero_is_the_skeleton_and_thick_bar_thins() -> None:
    label = np.zeros((24, 40), dtype=np.uint8)
    label[10:15, 5:35] = 1  # 5-px thick bar
    bare = skeleton_tube(label, radius=0)
    rows = np.nonzero(bare.any(axis=1))[0]
    assert rows.min() >= 10 and rows.max() <= 14
    # the skeleton runs along the middle row and is thin (at most one pixel per column in the bar's middle)
    assert bare[:, 12:28].sum(axis=0).max() == 1
    assert bare[12, 12:28].all()
    tube = skeleton_tube(label, radius=2)
    assert tube[10:15, 12:28].all()  # the 5-row tube around the middle row covers the bar's middle
    assert tube.sum() < label.sum() + 10  # and not much more


def test_skeleton_tube_empty_label() -> None:
    tube = skeleton_tube(np.zeros((8, 8), dtype=np.uint8))
    assert tube.shape == (8, 8) and tube.dtype == np.float32 and tube.sum() == 0


# -------------------------------------------------------------------------------------- U-Net weight map
def _two_squares() -> np.ndarray:
    label = np.ones((32, 40), dtype=np.uint8)  # membrane everywhere ...
    label[10:20, 8:18] = 0  # ... except cell A (cols 8..17)
    label[10:20, 20:30] = 0  # and cell B (cols 20..29): a 2-px membrane gap at cols 18, 19
    return label


def test_unet_weight_map_gap_between_two_cells() -> None:
    label = _two_squares()
    w0, sigma = 10.0, 5.0
    w = unet_weight_map(label, w0=w0, sigma=sigma)
    assert w.dtype == np.float32 and w.shape == label.shape
    n = label.size
    n_mem = int(label.sum())
    wc_mem = 0.5 / (n_mem / n)
    wc_cell = 0.5 / ((n - n_mem) / n)
    # gap pixel (15, 18): 1 px from cell A (col 17), 2 px from cell B (col 20)
    border = w0 * math.exp(-((1.0 + 2.0) ** 2) / (2 * sigma**2))
    assert w[15, 18] == pytest.approx(wc_mem + border, rel=1e-5)
    assert w[15, 19] == pytest.approx(wc_mem + border, rel=1e-5)  # symmetric: 2 px from A, 1 px from B
    # inside a cell: class weight only
    assert w[15, 12] == pytest.approx(wc_cell, rel=1e-6)
    # far corner (d2 > 4 sigma): the border term is negligible
    assert w[0, 39] == pytest.approx(wc_mem, abs=1e-3)
    # the class-balance part averages to 1 over the image
    wc = np.where(label == 1, wc_mem, wc_cell)
    assert wc.mean() == pytest.approx(1.0)
    assert np.all(w >= wc - 1e-5)


def test_unet_weight_map_single_cell_has_no_border_term() -> None:
    label = np.ones((20, 20), dtype=np.uint8)
    label[5:12, 6:14] = 0
    w = unet_weight_map(label)
    n_mem = int(label.sum())
    expected = np.where(label == 1, 0.5 * label.size / n_mem, 0.5 * label.size / (label.size - n_mem))
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    assert w.mean() == pytest.approx(1.0, rel=1e-6)


def test_unet_weight_map_single_class_is_one() -> None:
    np.testing.assert_allclose(unet_weight_map(np.ones((6, 6), dtype=np.uint8)), 1.0)
    np.testing.assert_allclose(unet_weight_map(np.zeros((6, 6), dtype=np.uint8)), 1.0)


def _grid_label(size: int, step: int, seed: int) -> np.ndarray:
    """Membrane lines on a jittered grid: many small cells."""
    rng = np.random.default_rng(seed)
    label = np.zeros((size, size), dtype=np.uint8)
    for pos in range(step // 2, size, step):
        j = int(rng.integers(-2, 3))
        label[max(pos + j, 0), :] = 1
        label[:, max(pos - j, 0)] = 1
        label[max(pos + j - 1, 0), : size // 3] = 1  # a thicker stretch
    return label


def test_unet_weight_map_matches_brute_force() -> None:
    label = _grid_label(48, 9, seed=1)
    w0, sigma = 10.0, 3.0
    cells, n = ndi.label(label == 0)
    assert n >= 9
    dist = np.sort(np.stack([ndi.distance_transform_edt(cells != i) for i in range(1, n + 1)]), axis=0)
    freq_mem = label.mean()
    wc = np.where(label == 1, 0.5 / freq_mem, 0.5 / (1 - freq_mem))
    border = w0 * np.exp(-((dist[0] + dist[1]) ** 2) / (2 * sigma**2)) * (label == 1)
    w = unet_weight_map(label, w0=w0, sigma=sigma)
    np.testing.assert_allclose(w, wc + border, atol=w0 * math.exp(-8) + 1e-5)


def test_unet_weight_map_mask_ignores_pixels() -> None:
    label = _two_squares()
    mask = np.ones_like(label)
    mask[:, 30:] = 0  # ignore the right strip (membrane only)
    w = unet_weight_map(label, mask=mask)
    assert np.all(w[:, 30:] == 0)
    labelled = mask > 0
    n = int(labelled.sum())
    n_mem = int((label[labelled] == 1).sum())
    assert w[15, 12] == pytest.approx(0.5 * n / (n - n_mem), rel=1e-6)  # class frequencies over labelled only
    wc = np.where(label == 1, 0.5 * n / n_mem, 0.5 * n / (n - n_mem))
    assert wc[labelled].mean() == pytest.approx(1.0)


def test_unet_weight_map_on_512_with_many_cells() -> None:
    """A realistic slice (hundreds of cells): class balance on cytoplasm, border weight between cells."""
    label = _grid_label(512, 36, seed=0)
    n_cells = ndi.label(label == 0)[1]
    assert 150 <= n_cells <= 300
    w = unet_weight_map(label)
    assert w.shape == (512, 512) and w.dtype == np.float32 and np.isfinite(w).all()
    freq = label.mean()
    np.testing.assert_allclose(w[label == 0], 0.5 / (1 - freq), rtol=1e-6)  # no border term on cytoplasm
    mem = w[label == 1]
    assert mem.min() >= 0.5 / freq * (1 - 1e-6) and mem.max() > 0.5 / freq + 1.0  # membranes between cells gain


# ------------------------------------------------------------------------------------------- edge band
def test_edge_band_around_a_vertical_line() -> None:
    label = np.zeros((20, 20), dtype=np.uint8)
    label[:, 10] = 1
    band = edge_band(label, width=3)
    assert band.dtype == np.uint8
    expected = np.zeros_like(band)
    expected[:, [7, 8, 9, 11, 12, 13]] = 1
    np.testing.assert_array_equal(band, expected)
    assert not np.any(band[label == 1])


def test_edge_band_is_euclidean_and_excludes_membrane() -> None:
    label = np.zeros((9, 9), dtype=np.uint8)
    label[4, 4] = 1
    band = edge_band(label, width=1)
    assert int(band.sum()) == 4  # the 4-neighbours; diagonals are sqrt(2) > 1 px away
    assert band[4, 4] == 0 and band[3, 4] == 1 and band[3, 3] == 0
    assert int(edge_band(label, width=2).sum()) == 12  # distances 1, sqrt 2, 2: 4 + 4 + 4


def test_edge_band_without_membrane_is_empty() -> None:
    assert edge_band(np.zeros((7, 7), dtype=np.uint8)).sum() == 0


# -------------------------------------------------------------------------------------- corrected pixels
def test_corrected_pixels_binary_and_probability() -> None:
    label = np.array([[1, 0], [1, 0]], dtype=np.uint8)
    pred = np.array([[1, 1], [0, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(corrected_pixels(label, pred), [[False, True], [True, False]])
    prob = np.array([[0.9, 0.6], [0.2, 0.49]], dtype=np.float32)
    out = corrected_pixels(label, prob)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, [[False, True], [True, False]])
    with pytest.raises(ValueError):
        corrected_pixels(label, np.zeros((3, 3), dtype=np.uint8))
