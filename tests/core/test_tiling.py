"""Overlap-tile stitching must reproduce whole-image results exactly for pointwise/known predictors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_neuroedge.config import NormConfig, TileConfig
from napari_neuroedge.inference.predict import TorchPredictor, count_tiles, iter_predict, predict_array
from napari_neuroedge.inference.tiling import blend_window, make_grid, read_window, reflect_index
from napari_neuroedge.progress import CallbackProgress, Cancelled, drive

RAW = NormConfig(mode="meanstd", mean=0.0, std=1.0)  # float input passes unchanged


def double(batch: np.ndarray) -> np.ndarray:
    return 2 * batch


@pytest.mark.parametrize("shape", [(37, 41), (2, 100, 130), (1, 64, 64), (3, 129, 257), (5, 7)])
@pytest.mark.parametrize("tile,overlap", [(16, 0.0), (32, 0.25), (64, 0.5), (512, 0.25)])
def test_known_function_stitches_exactly(shape, tile, overlap):
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    out = predict_array(img, double, tile=TileConfig(tile=tile, overlap=overlap, batch=3), norm=RAW)
    assert out.shape == img.shape
    np.testing.assert_allclose(out, 2 * img, atol=1e-5, rtol=0)


def test_uint8_input_normalised_by_dtype():
    img = np.arange(60 * 70, dtype=np.uint32).reshape(60, 70).astype(np.uint8)
    out = predict_array(img, double, tile=TileConfig(tile=32, overlap=0.25), norm=RAW)
    np.testing.assert_allclose(out, 2 * img.astype(np.float32) / 255, atol=1e-5)


def test_reflect_index_matches_numpy_pad():
    for n in (1, 2, 5, 9):
        idx = np.arange(-23, n + 23)
        ref = np.pad(np.arange(n), 23, mode="reflect") if n > 1 else np.zeros(n + 46, int)
        np.testing.assert_array_equal(reflect_index(idx, n), ref)


def test_read_window_mirrors_outside():
    img = np.arange(5 * 6).reshape(5, 6)
    ref = np.pad(img, 3, mode="reflect")
    np.testing.assert_array_equal(read_window(img, -3, -3, 11, 12), ref)


def test_grid_covers_image_and_last_tile_is_flush():
    g = make_grid(1000, 700, 256, 0.25)
    assert g.ys[0] == -32 and g.ys[-1] + 256 == 1000 + 32
    assert g.xs[-1] + 256 == 700 + 32
    small = make_grid(20, 30, 512, 0.25, multiple=16)
    # shrinks to fit (30 px + 2 x 15 px mirror context, rounded up to the model multiple)
    assert small.tile == 64 and small.n_tiles == 1


def test_blend_window_positive_and_peaked():
    for mode in ("gaussian", "cosine", "constant"):
        w = blend_window(64, mode)
        assert w.shape == (64, 64) and w.min() > 0 and w.max() == pytest.approx(1.0)
    g = blend_window(64, "gaussian")
    assert g[32, 32] > g[0, 0] * 100


def test_count_tiles_matches_progress_total():
    vol = np.zeros((2, 100, 130), np.float32)
    events = list(iter_predict(vol, double, [np.zeros_like(vol)], tile=TileConfig(tile=32, batch=5), norm=RAW))
    assert events[-1].done == events[-1].total == count_tiles(vol.shape, TileConfig(tile=32))


def test_slices_selects_and_orders_output():
    vol = np.random.default_rng(1).random((6, 40, 50)).astype(np.float32)
    out = predict_array(vol, double, tile=TileConfig(tile=32), norm=RAW, slices="2:5")
    np.testing.assert_allclose(out, 2 * vol[2:5], atol=1e-5)


def test_cancel_stops_within_one_batch():
    vol = np.zeros((3, 200, 200), np.float32)
    calls = []

    def counting(batch):
        calls.append(len(batch))
        return batch

    progress = CallbackProgress(should_stop=lambda: len(calls) >= 2)
    with pytest.raises(Cancelled):
        drive(iter_predict(vol, counting, [np.zeros_like(vol)], tile=TileConfig(tile=32, batch=2), norm=RAW), progress)
    assert len(calls) == 2


def test_writes_into_memmap(tmp_path):
    img = np.random.default_rng(2).random((2, 90, 70)).astype(np.float32)
    mm = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float32, shape=img.shape)
    for _ in iter_predict(img, double, [mm], tile=TileConfig(tile=32), norm=RAW):
        pass
    mm.flush()
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), 2 * img, atol=1e-5)


def test_real_cnn_tiled_matches_whole_image():
    """A small CNN (receptive field 9 px) gives nearly the same result tiled as on the whole image.

    The reference is whole-image inference on the same mirror-padded image. Pixels within 4 px of a tile edge
    see the network's own zero padding, but the blending window gives them little weight where another tile
    covers the pixel centrally, so the stitched result stays within a small, stated tolerance: no seam.
    """
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 5, padding=2), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 5, padding=2))
    img = np.random.default_rng(3).random((150, 170)).astype(np.float32)
    pred = TorchPredictor(net, "cpu")
    cfg = TileConfig(tile=48, overlap=0.5, batch=4)
    margin = make_grid(*img.shape, cfg.tile, cfg.overlap).ys[0] * -1
    padded = np.pad(img, margin, mode="reflect")
    whole = pred(padded[None, None])[0, 0, margin:-margin, margin:-margin]
    tiled = predict_array(img, pred, tile=cfg, norm=RAW)
    diff = np.abs(tiled - whole)
    grid = make_grid(*img.shape, cfg.tile, cfg.overlap)
    edges = sorted({e for y in grid.ys for e in (y, y + cfg.tile) if 0 < e < img.shape[0]})
    seam = max(diff[max(e - 4, 0):e + 4].max() for e in edges)
    print(f"max difference along tile borders: {seam:.2e}, mean difference {diff.mean():.2e}")
    assert diff.max() < 2e-3 and diff.mean() < 1e-4
    # without overlap the seams show: same network, overlap 0 is visibly worse
    no_overlap = predict_array(img, pred, tile=TileConfig(tile=48, overlap=0.0), norm=RAW)
    assert np.abs(no_overlap - pred(img[None, None])[0, 0]).max() > 10 * diff.max()
