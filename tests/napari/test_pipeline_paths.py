"""The same prediction request through the CLI and through the Predict widget's job (in memory and into its
on-disk OME-Zarr working arrays) gives identical probability, membranes and instances."""

from __future__ import annotations

import numpy as np
import tifffile
import zarr

from napari_neuroedge.progress import drive


class _Session:
    """What the widget's job asks of its session: the checkpoint and its description."""

    def __init__(self, path):
        from napari_neuroedge.models.checkpoint import load_checkpoint

        self.ckpt = load_checkpoint(path)

    def checkpoint(self, name):
        return self.ckpt

    def model_meta(self, name):
        return {"model": name}


def test_cli_and_widget_job_give_identical_arrays(tmp_path, synth_stack, tiny_checkpoint):
    from napari_neuroedge._napari.actions import gui_threads, predict_job
    from napari_neuroedge.cli import main
    from napari_neuroedge.io.workstore import OutputStore

    image = synth_stack.image  # (3, 96, 112) uint8
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, image, photometric="minisblack")
    # the widget's settings on the CPU: tile 64, the model's context, batch 1, TTA 6, threshold 0.45, seeds 0.25;
    # the widget keeps one core for the GUI, so the CLI runs on as many threads
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(gui_threads())
    try:
        assert main(["predict", str(src), "-o", str(tmp_path / "m.tif"), "--prob", str(tmp_path / "p.tif"),
                     "--instances", str(tmp_path / "i.zarr"), "--model", str(tiny_checkpoint), "--tile", "64",
                     "--batch", "1", "--tta", "6", "--threshold", "0.45", "--seed-threshold", "0.25", "--device",
                     "cpu", "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    cli_prob, cli_mem = tifffile.imread(tmp_path / "p.tif"), tifffile.imread(tmp_path / "m.tif")
    cli_inst = np.asarray(zarr.open(str(tmp_path / "i.zarr"), mode="r")[:])
    assert 0.05 < cli_mem.mean() < 0.5 and len(np.unique(cli_inst[1])) > 3  # a real mix, real cells

    session = _Session(tiny_checkpoint)
    store = OutputStore(tmp_path / "cache")
    for where in (None, store):  # in memory, then into the on-disk working arrays of large images
        result = drive(predict_job(image, [0, 1, 2], False, "em", session, "tiny", "cpu", 64, 0, 6, False, 0.45,
                                   True, where, 0.25))
        assert result.lazy is (where is not None)
        np.testing.assert_array_equal(np.asarray(result.prob), cli_prob)
        np.testing.assert_array_equal(np.asarray(result.membranes), cli_mem)
        np.testing.assert_array_equal(np.asarray(result.instances), cli_inst)
        assert np.asarray(result.instances).dtype == cli_inst.dtype == np.uint32
    # one slice at a time gives that slice's share of the whole-stack result (ids included)
    one = drive(predict_job(image, [2], False, "em", session, "tiny", "cpu", 64, 0, 6, False, 0.45, True, None, 0.25))
    np.testing.assert_array_equal(one.prob[0], cli_prob[2])
    np.testing.assert_array_equal(one.instances[0], cli_inst[2])
    store.close()


def test_working_arrays_get_the_layers_voxel_size_in_nm(make_napari_viewer):
    from napari_neuroedge._napari.landing import voxel_size_nm

    viewer = make_napari_viewer()
    img = np.zeros((2, 8, 8), np.uint8)
    nm = viewer.add_image(img, name="nm", scale=(40.0, 4.0, 4.0), units=("nm", "nm", "nm"))
    um = viewer.add_image(img, name="um", scale=(0.04, 0.004, 0.004), units=("um", "um", "um"))
    plain = viewer.add_image(img, name="plain", scale=(2.0, 1.0, 1.0))  # napari's own reader: pixels, no unit
    assert voxel_size_nm(nm) == (40.0, 4.0, 4.0)
    np.testing.assert_allclose(voxel_size_nm(um), (40.0, 4.0, 4.0))
    assert voxel_size_nm(plain) is None
    # a TIFF whose z spacing is unknown: the reader shows z as scale 1 (in "nm"); the outputs keep it unknown
    from napari_neuroedge._napari.reader import stack_layer_data
    from napari_neuroedge.io.stacks import EMStack

    data, kwargs, _ = stack_layer_data(EMStack(img, (float("nan"), 4.0, 4.0), "x.tif"))
    no_z = viewer.add_image(data, **kwargs)
    assert list(no_z.scale) == [1.0, 4.0, 4.0]
    got = voxel_size_nm(no_z)
    assert got[1:] == (4.0, 4.0) and got[0] != got[0]  # NaN, not 1 nm
    mixed = voxel_size_nm(viewer.add_image(img, scale=(2.0, 5.0, 5.0), units=("pixel", "nm", "nm")))
    assert mixed[1:] == (5.0, 5.0) and mixed[0] != mixed[0]  # 2 pixels is no length
