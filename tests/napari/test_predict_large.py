"""Large / lazy images: memory-mapped TIFF and zarr inputs are predicted into zarr-backed output layers.

``NEUROEDGE_LAZY_VOXELS`` is set tiny so small synthetic stacks take the large-image path; the outputs must equal
the core's in-memory ``predict_array``, the membrane layer must stay paintable and tracked, nothing half-done may
stay on disk, and the temporary folder must go with the viewer. A Qt-free check shows that peak memory on that
path does not grow with the number of slices and stays below the size of the volume's outputs.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from napari_neuroedge.io import workstore
from napari_neuroedge.io.chunks import paint_chunks
from napari_neuroedge.io.ngff import fill_levels
from napari_neuroedge._napari import lazy_outputs, tracking
from napari_neuroedge.inference import sinks
from napari_neuroedge.config import NormConfig

TILE = 64


@pytest.fixture
def lazy_env(monkeypatch, tmp_path) -> Path:
    """Everything above 1000 voxels is 'large'; output folders go to tmp_path/cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(workstore.ENV_LAZY_VOXELS, "1000")
    monkeypatch.setenv(workstore.ENV_CACHE_DIR, str(cache))
    return cache


def _memmap_input(tmp_path: Path, image: np.ndarray) -> np.memmap:
    import tifffile

    from napari_neuroedge.io.stacks import open_stack

    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, image, photometric="minisblack")
    data = open_stack(path).data
    assert isinstance(data, np.memmap)
    return data


def _zarr_input(tmp_path: Path, image: np.ndarray) -> zarr.Array:
    from napari_neuroedge.io.stacks import open_stack

    path = tmp_path / "stack.zarr"
    z = zarr.open(str(path), mode="w", shape=image.shape, chunks=(1,) * (image.ndim - 2) + (40, 48),
                  dtype=image.dtype)
    z[...] = image
    data = open_stack(path).data
    assert isinstance(data, zarr.Array)
    return data


def _reference(ckpt_path: Path, data, slices=None, tta: int = 1, variance: bool = False) -> np.ndarray:
    """The core's in-memory prediction with the widget's settings (tile 64, the model's context, batch 1)."""
    from napari_neuroedge.config import TileConfig, TTAConfig
    from napari_neuroedge.inference.predict import TorchPredictor, predict_array
    from napari_neuroedge.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    predictor = TorchPredictor(ckpt.build(), "cpu", tta=TTAConfig(n=tta, variance=variance))
    return predict_array(np.asarray(data), predictor, tile=TileConfig(tile=TILE, batch=1),
                         norm=ckpt.norm, slices=slices)


def _open_panel(make_napari_viewer, data, ckpt_path: Path):
    from napari_neuroedge._napari.widgets import NeuroEdgePanel

    viewer = make_napari_viewer()
    viewer.add_image(data, name="big", scale=(2.0, 1.0, 1.0)[-data.ndim:])
    panel = NeuroEdgePanel(viewer)
    viewer.window.add_dock_widget(panel, name="NeuroEdge", area="right")
    panel.predict.load_checkpoint(str(ckpt_path))
    panel.predict.tile_spin.setValue(TILE)
    panel.predict.device_combo.setCurrentText("cpu")
    return viewer, panel


def _store_arrays(cache: Path) -> list[str]:
    """Names of the zarr arrays in the (single) per-viewer output folder."""
    roots = list(cache.iterdir())
    assert len(roots) == 1 and roots[0].name.startswith("neuroedge-layers-")
    return sorted(p.name for p in roots[0].iterdir())


def _is_zarr(data) -> bool:
    return isinstance(data, zarr.Array) and not isinstance(data, np.ndarray)


# ---------------------------------------------------------------------------------------------- Qt-free units

def test_lazy_decision_and_chunks(monkeypatch, tmp_path):
    monkeypatch.delenv(workstore.ENV_LAZY_VOXELS, raising=False)
    assert workstore.lazy_voxels() == 256 * 2**20
    small = np.zeros((3, 96, 112), np.uint8)
    assert not workstore.wants_lazy(small)  # in memory and small: plain numpy layers
    assert workstore.wants_lazy(_memmap_input(tmp_path, small))  # memory-mapped: always lazy
    monkeypatch.setenv(workstore.ENV_LAZY_VOXELS, "32256")  # = 3 * 96 * 112
    assert not workstore.wants_lazy(small)
    monkeypatch.setenv(workstore.ENV_LAZY_VOXELS, "32255")
    assert workstore.wants_lazy(small)
    assert sinks.chunks_for((5, 3000, 700)) == (1, 1024, 700)
    assert sinks.chunks_for((2048, 100)) == (1024, 100)
    assert paint_chunks((5, 3000, 700)) == (1, 512, 512) and paint_chunks((100, 90)) == (100, 90)
    store = workstore.OutputStore(tmp_path)  # the label outputs the user paints get small chunks
    assert store.create((2, 600, 700), np.uint8, "membranes").chunks == (1, 512, 512)
    assert store.create((2, 600, 700), np.float32, "boundary").chunks == (1, 600, 700)
    assert tracking.blank((2, 20000, 20000), np.uint8).chunks == (1, 512, 512)  # a large blank label layer
    levels = store.levels_of(store.create((2, 300, 260), np.float32, "boundary", pyramid=True))
    assert [tuple(a.shape) for a in levels] == [(2, 300, 260), (2, 150, 130), (2, 75, 65)]  # down to 64 px
    levels[0][1] = np.arange(300 * 260, dtype=np.float32).reshape(300, 260)
    fill_levels(levels, [1])
    assert float(levels[1][1, 0, 0]) == np.mean([0, 1, 260, 261]) and float(np.asarray(levels[2][0]).max()) == 0
    store.close()


def test_a_dab_on_a_zarr_labels_layer_reads_only_the_chunks_under_the_brush(monkeypatch):
    """napari's own label check reads ``data[0]`` (a whole slice) at every dab; the layers NeuroEdge tracks check
    the label against the dtype instead, so a dab reads the few 512^2 chunks under the brush."""
    from napari.layers import Labels

    from napari_neuroedge._napari.labels_fix import check_labels_by_dtype

    data = zarr.zeros((2, 1024, 1024), chunks=paint_chunks((2, 1024, 1024)), dtype=np.uint8)
    layer = Labels(data)
    check_labels_by_dtype(layer)
    layer.brush_size = 9
    read: list[int] = []
    real = type(data).__getitem__
    monkeypatch.setattr(type(data), "__getitem__", lambda self, key: read.append(np.asarray(real(self, key)).size)
                        or real(self, key))
    layer.paint((1, 500, 600), 1)
    assert int(np.asarray(data[1]).sum()) > 50 and int(np.asarray(data[0]).max()) == 0  # painted slice 1 only
    read_by_dab = read[:-2]
    assert read_by_dab and max(read_by_dab) < 512 * 512  # never a whole slice
    with pytest.raises(ValueError):
        layer._validate_label_in_range(256)  # still refused: out of uint8's range
    layer._validate_label_in_range(255)


class _Recorder:
    """A (z, y, x) target with chunks (1, 4, 4) that logs every write."""

    def __init__(self, shape):
        self.data = np.zeros(shape, np.float32)
        self.shape, self.dtype, self.chunks = shape, self.data.dtype, (1, 4, 4)
        self.log: list[tuple[int, int, int, int, int]] = []

    def __setitem__(self, key, value):
        z, ys, xs = key
        self.log.append((z, ys.start, ys.stop, xs.start, xs.stop))
        self.data[key] = value


def test_band_sink_writes_each_chunk_once():
    src = np.arange(2 * 10 * 7, dtype=np.float32).reshape(2, 10, 7)
    rec = _Recorder((2, 10, 7))
    sink = sinks.BandSink(rec)
    for z, bands in ((0, [(0, 3), (3, 5), (5, 10)]), (1, [(0, 6), (6, 10)])):
        for y0, y1 in bands:  # iter_predict's order: top to bottom, bands of any height
            sink[z, y0:y1, :] = src[z, y0:y1]
    sink.flush()
    np.testing.assert_array_equal(rec.data, src)
    # chunk rows [0,4) [4,8) [8,10) x chunk columns [0,4) [4,7): 6 writes per slice, each chunk once
    per_slice = [(0, 4, 0, 4), (0, 4, 4, 7), (4, 8, 0, 4), (4, 8, 4, 7), (8, 10, 0, 4), (8, 10, 4, 7)]
    assert rec.log == [(z, *w) for z in (0, 1) for w in per_slice]
    # a write that does not continue the buffered rows flushes them first (nothing lost, nothing reordered)
    rec2 = _Recorder((2, 10, 7))
    sink2 = sinks.BandSink(rec2)
    sink2[1, 0:2, :] = src[1, 0:2]
    sink2[0, 5:7, :] = src[0, 5:7]
    sink2.flush()
    assert rec2.log[:2] == [(1, 0, 2, 0, 4), (1, 0, 2, 4, 7)]
    np.testing.assert_array_equal(rec2.data[1, :2], src[1, :2])
    np.testing.assert_array_equal(rec2.data[0, 5:7], src[0, 5:7])
    assert rec2.data[0, :5].max() == 0 and rec2.data[0, 7:].max() == 0


def test_output_store_create_discard_close(tmp_path):
    store = workstore.OutputStore(tmp_path)
    assert store.root is None  # nothing on disk until used
    a = store.create((3, 10, 12), np.uint8, "em membranes")
    b = store.create((10, 12), np.float32, "x")
    assert a.chunks == (1, 10, 12) and a.dtype == np.uint8 and int(np.asarray(a).max()) == 0
    a[1, 2, 3] = 7
    assert int(a[1, 2, 3]) == 7 and store.owns(a) and not store.owns(np.zeros(3))
    root = store.root
    assert root is not None and root.parent == tmp_path and len(list(root.iterdir())) == 2
    store.discard(a)
    assert len(list(root.iterdir())) == 1 and not store.owns(a)
    sinks.copy_slices(np.full((1, 10, 12), 0.5, np.float32), b, [(0, None)])
    assert float(np.asarray(b).sum()) == pytest.approx(60.0)
    store.close()
    assert not root.exists()
    with pytest.raises(workstore.StoreClosedError):
        store.create((2, 2), np.uint8)


class _ConvCheckpoint:
    """A stand-in checkpoint: 1x1 convolution (logit = 2x - 1 of the normalised input)."""

    norm = NormConfig()

    def build(self) -> torch.nn.Module:
        conv = torch.nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            conv.weight.fill_(2.0)
            conv.bias.fill_(-1.0)
        return conv


class _StubSession:
    def checkpoint(self, name):
        return _ConvCheckpoint()

    def model_meta(self, name):
        return {"model": name}


def test_peak_memory_does_not_scale_with_the_volume(tmp_path):
    """(2, 2048, 2048) zarr through the widget's job: peak memory is the same for 1 and 2 slices and below the
    outputs' size (float32 + uint8 volumes = 40 MiB; the in-memory path needs ~48 MiB here)."""
    from napari_neuroedge._napari.actions import predict_job
    from napari_neuroedge.progress import drive

    shape = (2, 2048, 2048)
    vol = zarr.open(str(tmp_path / "big.zarr"), mode="w", shape=shape, chunks=(1, 512, 512), dtype="uint8")
    yy, xx = np.mgrid[:2048, :2048]
    for z in range(2):
        vol[z] = ((xx * (3 + z) + yy * 7) % 251).astype(np.uint8)
    store = workstore.OutputStore(tmp_path / "cache")
    session = _StubSession()

    def run(slices):
        return drive(predict_job(vol, slices, False, "big", session, "conv", "cpu", 256, 0.25, 1, False, 0.5,
                                 False, store))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_small = drive(predict_job(np.asarray(vol[:, :64, :64]), [0, 1], False, "w", session, "conv", "cpu", 64,
                                      0.25, 1, False, 0.5, False, store))  # warm-up: imports are not counted
        workstore.discard(store, run_small.arrays())
        peaks = {}
        for slices in ([1], [0, 1]):
            tracemalloc.start()
            try:
                result = run(slices)
                if len(slices) == 1:  # what the GUI then does: copy the slice into the layer's array
                    target = store.create(shape, np.float32, "layer")
                    sinks.copy_slices(result.prob, target, [(0, 1)])
                peaks[len(slices)] = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
    finally:
        torch.set_num_threads(threads)
    assert result.lazy and _is_zarr(result.prob) and _is_zarr(result.membranes)
    assert result.prob.shape == shape and result.membranes.dtype == np.uint8
    # values: sigmoid(2 * normalised - 1) at a few pixels (percentile 1..99.8 normalisation per slice)
    from napari_neuroedge.inference.normalize import normalize_slice

    for z, y, x in ((0, 5, 7), (1, 1000, 2040), (1, 2047, 0)):
        norm = normalize_slice(np.asarray(vol[z]), _ConvCheckpoint.norm)[y, x]
        assert float(result.prob[z, y, x]) == pytest.approx(1 / (1 + np.exp(-(2 * norm - 1))), abs=1e-5)
        assert int(result.membranes[z, y, x]) == int(result.prob[z, y, x] >= 0.5)
    mib = 2**20
    assert peaks[2] < 40 * mib, peaks
    assert peaks[2] - peaks[1] < 8 * mib, peaks  # one more float32 slice alone would be +16 MiB
    store.close()


def test_slice_folder_is_read_once_per_slice(tmp_path, monkeypatch):
    """A folder of 2D files can only be read whole: each slice file is read once, not once per tile."""
    import tifffile

    from napari_neuroedge.io import stacks as io
    from napari_neuroedge._napari.actions import predict_job
    from napari_neuroedge.progress import drive

    stack = (np.arange(3 * 40 * 48) % 251).astype(np.uint8).reshape(3, 40, 48)
    folder = tmp_path / "slices"
    folder.mkdir()
    for z in range(3):
        tifffile.imwrite(folder / f"s{z:02d}.tif", stack[z])
    data = io.open_stack(folder).data
    assert isinstance(data, io.SliceFolder)
    reads: list[str] = []
    real = io._imread_2d
    monkeypatch.setattr(io, "_imread_2d", lambda path: reads.append(Path(path).name) or real(path))
    store = workstore.OutputStore(tmp_path / "cache")
    result = drive(predict_job(data, [0, 1, 2], False, "f", _StubSession(), "conv", "cpu", 32, 0.25, 1, False,
                               0.5, False, store))  # 2 x 2 tiles of 32 px per slice
    assert reads == ["s00.tif", "s01.tif", "s02.tif"]
    ref = _reference_conv(stack)
    np.testing.assert_allclose(np.asarray(result.prob), ref, atol=1e-5)
    cache = sinks.SliceCache(stack)
    np.testing.assert_array_equal(cache[1, 3:7, -5:], stack[1, 3:7, -5:])
    np.testing.assert_array_equal(cache[-1], stack[2])
    np.testing.assert_array_equal(cache[0:2, 1], stack[0:2, 1])
    store.close()


def _reference_conv(stack: np.ndarray) -> np.ndarray:
    from napari_neuroedge.config import TileConfig
    from napari_neuroedge.inference.predict import TorchPredictor, predict_array

    predictor = TorchPredictor(_ConvCheckpoint().build(), "cpu")
    return predict_array(stack, predictor, tile=TileConfig(tile=32, batch=1), norm=NormConfig())


# ---------------------------------------------------------------------------------------------- the widget

@pytest.mark.parametrize("kind", ["memmap", "zarr"])
def test_lazy_inputs_predict_into_zarr_layers(qtbot, make_napari_viewer, lazy_env, synth_stack, tiny_checkpoint,
                                              waiter, goto, tmp_path, kind):
    image = synth_stack.image
    data = _memmap_input(tmp_path, image) if kind == "memmap" else _zarr_input(tmp_path, image)
    viewer, panel = _open_panel(make_napari_viewer, data, tiny_checkpoint)
    p = panel.predict
    assert tracking.image_array(viewer.layers["big"]) is data  # the layer stays lazy

    # current slice: only slice 1 is predicted, into a full-size zarr array
    goto(viewer, viewer.layers["big"], 1)
    p.scope_combo.setCurrentText("current slice")
    assert waiter(p.predict()).state == "done"
    boundary, mem = viewer.layers["big boundary"], viewer.layers["big membranes"]
    assert _is_zarr(boundary.data) and _is_zarr(mem.data)
    assert boundary.data.shape == mem.data.shape == image.shape and boundary.data.chunks == (1, 96, 112)
    np.testing.assert_allclose(boundary.data[1], _reference(tiny_checkpoint, data, "1")[0], atol=1e-5)
    assert float(np.asarray(boundary.data[0]).max()) == 0 and float(np.asarray(boundary.data[2]).max()) == 0
    np.testing.assert_array_equal(mem.data[1], (np.asarray(boundary.data[1]) >= 0.5).astype(np.uint8))
    assert 0.05 < float(np.asarray(mem.data[1]).mean()) < 0.5
    assert len(_store_arrays(lazy_env)) == 2  # the staged slice was copied in and deleted

    # all slices with TTA uncertainty and instances
    p.tta_combo.setCurrentText("6 (rotations + flips)")
    p.uncertainty_check.setChecked(True)
    p.instances_check.setChecked(True)
    p.scope_combo.setCurrentText("all slices")
    assert waiter(p.predict()).state == "done"
    assert viewer.layers["big boundary"] is boundary and viewer.layers["big membranes"] is mem
    unc, inst = viewer.layers["big uncertainty"], viewer.layers["big instances"]
    for layer in (boundary, mem, unc, inst):
        assert _is_zarr(layer.data) and layer.data.shape == image.shape
        np.testing.assert_allclose(layer.scale, [2.0, 1.0, 1.0])
    ref = _reference(tiny_checkpoint, data, tta=6, variance=True)
    assert ref.shape == (2, *image.shape)
    np.testing.assert_allclose(np.asarray(boundary.data), ref[0], atol=1e-5)
    np.testing.assert_allclose(np.asarray(unc.data), ref[1], atol=1e-5)
    assert float(np.asarray(unc.data).max()) > 0
    np.testing.assert_array_equal(np.asarray(mem.data), (ref[0] >= 0.5).astype(np.uint8))
    assert inst.data.dtype == np.uint32
    for z in range(3):
        ids = np.unique(np.asarray(inst.data[z]))
        plane = image.shape[-2] * image.shape[-1]  # ids unique across the stack: z * H * W + cell
        assert ids.min() >= z * plane + 1 and ids.max() < (z + 1) * plane and len(ids) > 3
    assert tracking.ledger_of(mem).predicted == {0, 1, 2}
    assert len(_store_arrays(lazy_env)) == 4  # staged arrays became the layers; replaced ones were deleted


def test_lazy_membranes_paint_tracked_kept_and_cleaned_up(qtbot, make_napari_viewer, lazy_env, synth_stack,
                                                          tiny_checkpoint, waiter, goto, tmp_path, notes):
    from scipy import ndimage as ndi

    data = _memmap_input(tmp_path, synth_stack.image)
    viewer, panel = _open_panel(make_napari_viewer, data, tiny_checkpoint)
    p, c = panel.predict, panel.correct
    p.scope_combo.setCurrentText("all slices")
    waiter(p.predict())
    mem = viewer.layers["big membranes"]
    first = mem.data
    assert _is_zarr(first) and c.membranes_combo.currentText() == "big membranes"

    # paint into a cell on slice 2: the zarr array changes there only, and the Correct widget lists the slice
    goto(viewer, viewer.layers["big"], 2)
    dist = ndi.distance_transform_edt(np.pad(np.asarray(mem.data[2]) == 0, 1))[1:-1, 1:-1]  # border = edge
    y, x = (int(v) for v in np.unravel_index(int(np.argmax(dist)), dist.shape))
    assert dist[y, x] >= 4
    before = np.asarray(first[...]).copy()
    mem.brush_size = 3
    mem.selected_label = 1
    mem.paint((2, y, x), 1)
    changed = np.argwhere(np.asarray(first[...]) != before)
    assert len(changed) == 9 and set(changed[:, 0]) == {2}  # a 3 px brush: 3 x 3 pixels, all on slice 2
    assert int(first[2, y, x]) == 1
    painted = np.asarray(first[2]).copy()
    meta = tracking.ledger_of(mem)
    assert meta.edited == {2} and meta.corrected == {2}
    assert c.slice_list.count() == 1

    # predicting all slices again keeps the corrected slice; the new zarr array replaces the old one on disk
    waiter(p.predict())
    assert mem.data is not first and _is_zarr(mem.data)
    assert int(mem.data[2, y, x]) == 1
    np.testing.assert_array_equal(np.asarray(mem.data[2]), painted)
    np.testing.assert_array_equal(np.asarray(mem.data[:2]), before[:2])  # the same model: same labels
    assert "Kept your corrections on slice(s) 2" in p.jobs.status.text()
    assert len(_store_arrays(lazy_env)) == 2  # boundary + membranes; the replaced ones are gone

    # the current slice too; and painting the swapped-in array is still tracked
    p.scope_combo.setCurrentText("current slice")
    waiter(p.predict())
    assert int(mem.data[2, y, x]) == 1
    y0, x0 = (int(v) for v in np.argwhere(np.asarray(mem.data[0]) == 1)[0])
    mem.mode = "erase"
    mem.paint((0, y0, x0), 0)
    assert int(mem.data[0, y0, x0]) == 0 and meta.edited == {0, 2}
    assert c.slice_list.count() == 2

    # closing the viewer removes the temporary folder
    root = lazy_outputs.store_for(p.session).root
    assert root is not None and root.exists() and root.parent == lazy_env
    viewer.close()
    qtbot.waitUntil(lambda: not root.exists(), timeout=10_000)


def test_lazy_probability_layers_are_pyramids_and_the_membranes_stay_paintable(qtbot, make_napari_viewer, lazy_env,
                                                                               tiny_checkpoint, waiter, goto,
                                                                               tmp_path, monkeypatch):
    """On the disk-backed path the boundary layer is multiscale (napari reads only the level it shows): level 1
    is the 2x2 mean of level 0 wherever a prediction landed, for the current slice (copied into the layer's array
    in the landing thread) and for all slices (the staged pyramid adopted); the membranes stay one paintable level,
    shown once their data is complete."""
    from napari_neuroedge.io.sample import synthetic_em

    import threading

    from napari_neuroedge._napari import landing

    stack = synthetic_em((3, 160, 192), cell_size=24, seed=2)
    data = _zarr_input(tmp_path, stack.image)
    viewer, panel = _open_panel(make_napari_viewer, data, tiny_checkpoint)
    p = panel.predict
    copied_in: list[str] = []
    real_copy = landing.copy_slices

    def recording_copy(*args):
        copied_in.append(threading.current_thread().name)
        return real_copy(*args)

    monkeypatch.setattr(landing, "copy_slices", recording_copy)

    def mean2(a):
        return a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2).mean(axis=(1, 3))

    goto(viewer, viewer.layers["big"], 1)
    p.scope_combo.setCurrentText("current slice")
    assert waiter(p.predict()).state == "done"
    boundary, mem = viewer.layers["big boundary"], viewer.layers["big membranes"]
    assert boundary.multiscale and [tuple(a.shape) for a in boundary.data] == [(3, 160, 192), (3, 80, 96)]
    np.testing.assert_allclose(boundary.data[1][1], mean2(np.asarray(boundary.data[0][1])), atol=1e-6)
    assert float(np.asarray(boundary.data[1][0]).max()) == 0 and float(np.asarray(boundary.data[0][2]).max()) == 0
    assert len(copied_in) == 2 and all(n.startswith("neuroedge-landing") for n in copied_in)  # off the GUI thread
    np.testing.assert_allclose(boundary.data[0][1], _reference(tiny_checkpoint, data, "1")[0], atol=1e-5)
    assert not mem.multiscale and _is_zarr(mem.data) and mem.visible and mem.editable
    np.testing.assert_array_equal(mem.data[1], (np.asarray(boundary.data[0][1]) >= 0.5).astype(np.uint8))
    y, x = (int(v) for v in np.argwhere(np.asarray(mem.data[1]) == 0)[0])
    mem.brush_size = 1
    mem.paint((1, y, x), 1)
    assert int(mem.data[1, y, x]) == 1 and tracking.ledger_of(mem).edited == {1}

    p.scope_combo.setCurrentText("all slices")
    assert waiter(p.predict()).state == "done"
    boundary = viewer.layers["big boundary"]
    assert boundary.multiscale and viewer.layers["big membranes"] is mem
    full = np.asarray(boundary.data[0])
    np.testing.assert_allclose(full, _reference(tiny_checkpoint, data), atol=1e-5)
    np.testing.assert_allclose(np.asarray(boundary.data[1]), np.stack([mean2(f) for f in full]), atol=1e-6)
    assert int(mem.data[1, y, x]) == 1  # the corrected slice kept its labels
    assert tracking.predicted_membranes(viewer, mem, 0) is not None  # read from level 0


def test_lazy_2d_zarr_image(qtbot, make_napari_viewer, lazy_env, tiny_checkpoint, waiter, tmp_path):
    from napari_neuroedge.io.sample import synthetic_em

    image = synthetic_em((80, 72), cell_size=20, seed=5).image
    data = _zarr_input(tmp_path, image)
    viewer, panel = _open_panel(make_napari_viewer, data, tiny_checkpoint)
    waiter(panel.predict.predict())
    boundary, mem = viewer.layers["big boundary"], viewer.layers["big membranes"]
    assert _is_zarr(boundary.data) and _is_zarr(mem.data) and boundary.data.shape == (80, 72)
    ref = _reference(tiny_checkpoint, data)
    np.testing.assert_allclose(np.asarray(boundary.data), ref, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(mem.data), (ref >= 0.5).astype(np.uint8))
    assert 0 < float(np.asarray(mem.data).mean()) < 0.6


def test_cancelled_lazy_prediction_leaves_nothing(make_napari_viewer, lazy_env, synth_stack, tiny_checkpoint, waiter,
                                                  tmp_path, notes, start_cancellable_prediction):
    data = _zarr_input(tmp_path, synth_stack.image)
    viewer, panel = _open_panel(make_napari_viewer, data, tiny_checkpoint)
    p = panel.predict
    job = start_cancellable_prediction(p)
    p.jobs.cancel_button.click()
    waiter(job)
    assert job.state == "cancelled"
    assert "big boundary" not in viewer.layers and "big membranes" not in viewer.layers
    assert _store_arrays(lazy_env) == []  # the staged arrays were deleted in the worker
    assert any("cancelled" in m for m in notes("info"))
