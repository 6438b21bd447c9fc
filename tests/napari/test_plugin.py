"""npe2 manifest, reader, writer and sample data of the plugin."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import napari_neuroedge
from napari_neuroedge._napari.reader import napari_get_reader
from napari_neuroedge._napari.sample_data import synthetic_stack
from napari_neuroedge._napari.writer import write_labels
from napari_neuroedge.io.atomic import OutputExistsError

MANIFEST = Path(napari_neuroedge.__file__).parent / "napari.yaml"


def test_manifest_validates_and_every_python_name_imports():
    import npe2

    pm = npe2.PluginManifest.from_file(MANIFEST)
    assert pm.name == "napari-neuroedge"
    names = [c.python_name for c in pm.contributions.commands]
    assert len(names) == 8
    for name in names:
        module, _, attr = name.partition(":")
        assert module.startswith("napari_neuroedge._napari")
        assert callable(getattr(importlib.import_module(module), attr)), name
    widgets = {w.display_name for w in pm.contributions.widgets}
    assert widgets == {"NeuroEdge", "Predict", "Correct", "Export training set", "Fine-tune"}
    cli = Path(sys.executable).with_name("npe2")
    proc = subprocess.run([str(cli), "validate", str(MANIFEST), "--imports"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "valid" in proc.stdout, proc.stdout + proc.stderr


def test_plugin_is_discovered_by_napari():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    assert pm.get_manifest("napari-neuroedge").display_name == "NeuroEdge"


def test_reader_returns_none_for_what_it_cannot_read(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "corrupt.tif").write_bytes(b"II*\x00garbage")
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (tmp_path / "notes.txt", tmp_path / "corrupt.tif", rgb, empty, tmp_path / "missing.tif",
                 [str(rgb), str(rgb)], 42, None):
        assert napari_get_reader(path if not isinstance(path, Path) else str(path)) is None, path


def test_reader_stack_with_voxel_size(tmp_path):
    data = (np.arange(3 * 20 * 24) % 251).astype(np.uint8).reshape(3, 20, 24)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.004, 1 / 0.004),
                     metadata={"spacing": 0.05, "unit": "um"})
    reader = napari_get_reader(str(path))
    assert reader is not None
    (arr, meta, kind), = reader(str(path))
    assert kind == "image" and meta["name"] == "stack"
    np.testing.assert_array_equal(np.asarray(arr), data)
    np.testing.assert_allclose(meta["scale"], [50.0, 4.0, 4.0], rtol=1e-4)  # nm
    assert meta["metadata"]["source"] == str(path)


def test_reader_folder_and_zarr(tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    data = np.random.default_rng(0).integers(0, 255, (2, 12, 10), dtype=np.uint8)
    for i, sl in enumerate(data):
        tifffile.imwrite(folder / f"s{i:02d}.tif", sl)
    (arr, meta, kind), = napari_get_reader(str(folder))(str(folder))
    assert arr.shape == (2, 12, 10)
    np.testing.assert_array_equal(np.asarray(arr[1]), data[1])
    import zarr

    zpath = tmp_path / "vol.zarr"
    z = zarr.open(str(zpath), mode="w", shape=(2, 12, 10), dtype="uint8")
    z[:] = data
    (arr, meta, kind), = napari_get_reader(str(zpath))(str(zpath))
    np.testing.assert_array_equal(np.asarray(arr[:]), data)


def test_writer_atomic_and_never_overwrites(tmp_path):
    labels = np.zeros((2, 8, 9), np.int64)
    labels[1, 2:4, 3:6] = 1
    out = tmp_path / "membranes.tif"
    assert write_labels(str(out), labels, {"scale": (50.0, 4.0, 4.0)}) == [str(out)]
    back = tifffile.imread(out)
    assert back.dtype == np.uint8  # compact dtype
    np.testing.assert_array_equal(back, labels)
    with pytest.raises(OutputExistsError, match="never overwrites"):
        write_labels(str(out), labels * 0, {})
    np.testing.assert_array_equal(tifffile.imread(out), labels)  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["membranes.tif"]  # no temp files left


def test_writer_through_napari(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.eye(6, dtype=np.uint8), name="mem")
    out = tmp_path / "mem.tif"
    written = layer.save(str(out), plugin="napari-neuroedge")
    assert written == [str(out)]
    np.testing.assert_array_equal(tifffile.imread(out), np.eye(6, dtype=np.uint8))


def test_sample_data():
    (img, img_meta, k1), (mem, mem_meta, k2) = synthetic_stack()
    assert (k1, k2) == ("image", "labels")
    assert img.shape == mem.shape == (5, 256, 256) and img.dtype == mem.dtype == np.uint8
    assert set(np.unique(mem)) == {0, 1} and 0.05 < mem.mean() < 0.4
    assert img[mem == 1].mean() < img[mem == 0].mean() - 40  # membranes are dark
    assert img_meta["name"] == "synthetic EM"


def test_widgets_open_from_the_plugins_menu(make_napari_viewer):
    from napari_neuroedge._napari.widgets import (CorrectWidget, ExportWidget, FinetuneWidget, NeuroEdgePanel,
                                                  PredictWidget)

    viewer = make_napari_viewer()
    expected = {"NeuroEdge": NeuroEdgePanel, "Predict": PredictWidget, "Correct": CorrectWidget,
                "Export training set": ExportWidget, "Fine-tune": FinetuneWidget}
    widgets = {}
    for name, cls in expected.items():
        dock, widget = viewer.window.add_plugin_dock_widget("napari-neuroedge", name)
        assert isinstance(widget, cls), name
        widgets[name] = widget
    # napari hands plugin widgets a PublicOnlyProxy of the viewer; the widgets work on the viewer itself and all
    # widgets of one viewer share one session (model list, jobs)
    panel = widgets["NeuroEdge"]
    assert panel.predict.viewer is viewer
    sessions = {id(w.session) for w in (panel.predict, panel.finetune, widgets["Predict"], widgets["Correct"],
                                        widgets["Export training set"], widgets["Fine-tune"])}
    assert len(sessions) == 1


def test_session_keeps_a_loaded_checkpoint_until_its_file_changes(make_napari_viewer, tiny_checkpoint, tmp_path):
    """The session's checkpoints live in the one model cache (PredictorCache.lookup, keyed by path and mtime): the
    same file gives the same object; a file rewritten in place (a new fine-tune under the same name) is reloaded."""
    import os
    import shutil

    from napari_neuroedge._napari.session import get_session

    session = get_session(make_napari_viewer())
    path = tmp_path / "m.pt"
    shutil.copy(tiny_checkpoint, path)
    name = session.add_model(str(path), select=True)
    first = session.checkpoint(name)
    assert session.checkpoint(name) is first
    shutil.copy(tiny_checkpoint, path)
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 10))
    again = session.checkpoint(name)
    assert again is not first and again.step == first.step
