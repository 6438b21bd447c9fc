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
@pytest.mark.parametrize("tile,context", [(16, 1), (32, 4), (64, 16), (512, 64)])
@pytest.mark.parametrize("blend", ["context", "gaussian"])
def test_known_function_stitches_exactly(shape, tile, context, blend):
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    out = predict_array(img, double, tile=TileConfig(tile=tile, context=context, batch=3, blend=blend), norm=RAW)
    assert out.shape == img.shape
    np.testing.assert_allclose(out, 2 * img, atol=1e-5, rtol=0)


def test_uint8_input_normalised_by_dtype():
    img = np.arange(60 * 70, dtype=np.uint32).reshape(60, 70).astype(np.uint8)
    out = predict_array(img, double, tile=TileConfig(tile=32, context=4), norm=RAW)
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


def test_grid_covers_image_with_fewest_tiles():
    g = make_grid(1000, 700, 256, 32)
    # tiles start at the top/left border, neighbours overlap by >= 2 x context, the last one ends flush
    assert g.ys[0] == 0 and g.xs[0] == 0 and g.ys[-1] + g.tile_h == 1000 and g.xs[-1] + g.tile_w == 700
    for starts, size in ((g.ys, g.tile_h), (g.xs, g.tile_w)):
        assert min(size - (b - a) for a, b in zip(starts, starts[1:])) >= 64
    # no smaller number of tiles of at most 256 px could cover 1000 px with 64 px overlaps: 4 x 256 - 3 x 64 < 1000
    assert len(g.ys) == 5 and g.tile_h <= 256 and g.tile_w <= 256
    # an image that fits is one pass, filled up to the model's multiple
    one = make_grid(512, 512, 1024, 80, 16)
    assert one.n_tiles == 1 and one.tile_shape == (512, 512)
    small = make_grid(20, 30, 512, 64, multiple=16)
    assert small.tile_shape == (32, 32) and small.n_tiles == 1


def test_grid_starts_on_the_pooling_grid_and_saves_pixels():
    """Starts are multiples of the model's multiple; at 2048^2 the plan needs fewer tile pixels than
    MONAI's 512 px tiles at overlap 0.25 (25 tiles) while every overlap still spans 2 x 80 px of context."""
    g = make_grid(2048, 2048, 1024, 80, 16)
    assert all(s % 16 == 0 for s in g.ys + g.xs) and g.tile_h % 16 == 0
    assert min(g.tile_h - (b - a) for a, b in zip(g.ys, g.ys[1:])) >= 160
    assert g.tile_pixels < 25 * 512**2
    # with tiles up to 2048 px the whole slice is one pass: no pixel twice
    assert make_grid(2048, 2048, 2048, 80, 16).tile_pixels == 2048 * 2048


def test_grid_of_a_non_square_image_uses_rectangular_tiles():
    """A 512 x 1536 image is one 512 x 1536 pass under a 2048 px limit (a square plan would run 1536^2: 3x the
    pixels), and under a 1024 px limit a row of 512 px high tiles."""
    g = make_grid(512, 1536, 2048, 80, 16)
    assert g.n_tiles == 1 and g.tile_shape == (512, 1536) and g.tile_pixels == 512 * 1536
    g = make_grid(512, 1536, 1024, 80, 16)
    assert g.tile_h == 512 and len(g.ys) == 1 and len(g.xs) == 2 and g.xs[-1] + g.tile_w == 1536
    assert g.tile_pixels < 1.25 * 512 * 1536
    # odd sizes are filled up to the multiple on each axis separately
    assert make_grid(100, 300, 2048, 80, 16).tile_shape == (112, 304)


def test_rectangular_tiled_prediction_equals_whole_image_for_a_local_predictor():
    """Stitching with rectangular tiles reproduces a local (3 x 3 mean) predictor on the whole image (to the
    blending window's tolerance), and TTA's rotations run on the transposed tiles."""
    from scipy import ndimage

    from napari_neuroedge.config import TileConfig
    from napari_neuroedge.inference.predict import predict_array
    from napari_neuroedge.inference.tta import tta_predict

    rng = np.random.default_rng(0)
    img = rng.random((60, 200)).astype(np.float32)

    def local(b):
        return np.stack([ndimage.uniform_filter(t[0], 3, mode="reflect")[None] for t in b]).astype(np.float32)

    local.context = 4
    shapes = []

    def spy(b):
        shapes.append(b.shape[-2:])
        return local(b)

    spy.context = 4
    from napari_neuroedge.config import NormConfig

    norm = NormConfig(mode="meanstd", mean=0.0, std=1.0)
    whole = local(img[None, None])[0, 0]
    out = predict_array(img, lambda b: tta_predict(spy, b, 6), tile=TileConfig(tile=96, context=4), norm=norm)
    grid = make_grid(60, 200, 96, 4)
    assert grid.tile_h == 60 and len(grid.xs) == 3  # one row of rectangular tiles
    assert {tuple(s) for s in shapes} == {(60, grid.tile_w), (grid.tile_w, 60)}
    # exact up to the context window's 1e-4 weight on the neighbour's edge pixels (|error| < 1e-4 here)
    np.testing.assert_allclose(out[1:-1, 1:-1], whole[1:-1, 1:-1], atol=1e-4)
    assert np.abs(out - whole).mean() < 2e-6


def test_blend_window_positive_and_peaked():
    for mode in ("context", "gaussian", "cosine", "constant"):
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


def test_slice_spec_joins_ranges_with_commas():
    from napari_neuroedge.slices import parse_slices

    assert list(parse_slices("0:3, 5:7,-1", 10)) == [0, 1, 2, 5, 6, 9]
    with pytest.raises(ValueError, match="more than once"):
        parse_slices("0:3,2", 10)
    with pytest.raises(ValueError, match="select nothing"):
        parse_slices("0:3,12:14", 10)


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
    """A small CNN (two 5x5 convolutions: receptive context 4 px) tiled with 4 px of context equals whole-image
    inference to float rounding: every pixel is decided by a tile that sees its whole context. With less
    context than the network's, or the old gaussian window, the seams show."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 5, padding=2), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 5, padding=2))
    img = np.random.default_rng(3).random((150, 170)).astype(np.float32)
    pred = TorchPredictor(net, "cpu", precision="fp32")
    whole = pred(img[None, None])[0, 0]
    tiled = predict_array(img, pred, tile=TileConfig(tile=48, context=4, batch=4), norm=RAW)
    grid = make_grid(*img.shape, 48, 4)
    assert grid.n_tiles > 9  # really tiled
    diff = np.abs(tiled - whole)
    print(f"max |tiled - whole| {diff.max():.2e}, mean {diff.mean():.2e}")
    assert diff.max() < 1e-4 * np.abs(whole).max() + 1e-5
    short = predict_array(img, pred, tile=TileConfig(tile=48, context=1, batch=4), norm=RAW)
    assert np.abs(short - whole).max() > 100 * diff.max()
    gauss = predict_array(img, pred, tile=TileConfig(tile=48, context=4, batch=4, blend="gaussian"), norm=RAW)
    assert np.abs(gauss - whole).max() > 10 * diff.max()


def test_auto_tile_follows_free_memory_and_precision():
    from napari_neuroedge.inference.tile_size import auto_tile, available_memory, resolve_tile

    gib = 2**30
    # 2048^2 x 160 B (bf16) = 640 MiB must fit in a quarter of what is free
    assert auto_tile("bf16", available=4 * gib) == 2048
    assert auto_tile("fp32", available=4 * gib) == 1024  # twice the bytes per pixel
    assert auto_tile("bf16", available=1 * gib) == 1024
    assert auto_tile("bf16", available=64 * 2**20) == 512  # nothing fits: the smallest
    free = available_memory("cpu")
    assert free is None or free > 0
    assert resolve_tile(640, object()) == 640  # an explicit size wins
    assert resolve_tile(0, lambda b: b) == 1024  # a plain callable: the generic size

    class Chooses:
        def auto_tile(self) -> int:
            return 2048

    assert resolve_tile(0, Chooses()) == 2048


def test_default_tile_plan_runs_a_2048_slice_in_one_pass_when_memory_allows(monkeypatch):
    from napari_neuroedge.config import TileConfig
    from napari_neuroedge.inference import tile_size
    from napari_neuroedge.inference.predict import TorchPredictor, plan_grid
    from napari_neuroedge.models.unet import UNet

    pred = TorchPredictor(UNet(base=4, depth=2), "cpu", precision="fp32")
    monkeypatch.setattr(tile_size, "available_memory", lambda device="cpu": 16 * 2**30)
    assert plan_grid((2048, 2048), TileConfig(), pred).n_tiles == 1
    monkeypatch.setattr(tile_size, "available_memory", lambda device="cpu": 2 * 2**30)
    small = plan_grid((2048, 2048), TileConfig(), pred)  # fp32 at 2 GiB free: 1024 px tiles at most
    assert small.n_tiles > 1 and max(small.tile_shape) <= 1024


def test_large_tiles_are_not_batched_past_the_predictors_pass_size():
    from napari_neuroedge.inference.predict import TorchPredictor
    from napari_neuroedge.inference.stitch import tiles_per_pass
    from napari_neuroedge.models.unet import UNet

    pred = TorchPredictor(UNet(base=4, depth=2), "cpu", precision="fp32")
    assert tiles_per_pass(4, make_grid(2048, 2048, 512, 80, 16), pred) == 4  # 512^2 tiles: 1 Mpx per pass
    assert tiles_per_pass(4, make_grid(9958, 9959, 2048, 80, 16), pred) == 1  # 1808^2 tiles: one per pass
    assert tiles_per_pass(4, make_grid(100, 100, 64, 4), lambda b: b) == 4  # a plain callable: as asked
