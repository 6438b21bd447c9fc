"""Export widget: corrected slices -> training-set folder, read back identically by the trainer's loader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from qtpy.QtCore import Qt

from napari_neuroedge._napari import tracking
from napari_neuroedge.config import NormConfig
from napari_neuroedge.inference.normalize import normalize_slice
from napari_neuroedge.training.dataset import load_training_folder


@pytest.fixture
def corrected(panel_viewer, waiter, synth_stack):
    """Slices 0 and 2 predicted and corrected (slice 2 also with an ignore region)."""
    viewer, panel = panel_viewer
    panel.predict.scope_combo.setCurrentText("all slices")
    waiter(panel.predict.predict())
    mem = viewer.layers["em membranes"]
    y0, x0 = np.argwhere(np.asarray(mem.data[0]) == 0)[len(np.argwhere(np.asarray(mem.data[0]) == 0)) // 2]
    mem.paint((0, int(y0), int(x0)), 1)
    y2, x2 = np.argwhere(np.asarray(mem.data[2]) == 1)[0]
    mem.paint((2, int(y2), int(x2)), 0)
    ignore = panel.correct.add_ignore_layer()
    ignore.data[2, 60:70, 80:100] = 1
    return viewer, panel, mem


def test_export_round_trip(qtbot, corrected, tmp_path, synth_stack, notes):
    viewer, panel, mem = corrected
    meta = tracking.ledger_of(mem)
    assert meta.corrected == {0, 2}
    e = panel.export
    qtbot.waitUntil(lambda: "2 slice(s) marked corrected: 0, 2" in e.info.text(), timeout=2000)
    folder = tmp_path / "trainset"
    e.folder_edit.setText(str(folder))
    qtbot.mouseClick(e.export_button, Qt.LeftButton)
    assert sorted(p.name for p in (folder / "images").iterdir()) == ["em_z0000.tif", "em_z0002.tif"]
    assert sorted(p.name for p in (folder / "labels").iterdir()) == ["em_z0000.tif", "em_z0002.tif"]
    assert sorted(p.name for p in (folder / "masks").iterdir()) == ["em_z0002.tif"]  # only where ignore was painted
    assert sorted(p.name for p in (folder / "predictions").iterdir()) == ["em_z0000.tif", "em_z0002.tif"]
    manifest = json.loads((folder / "manifest.json").read_text())
    items = {it["slice"]: it for it in manifest["items"]}
    assert set(items) == {0, 2}
    it = items[2]
    assert it["source"] == "napari layer 'em'" and it["image_layer"] == "em"
    assert it["pixel_size"] == [1.5, 1.5]
    assert it["model"] == panel.predict.session.selected_model
    assert it["model_version"].startswith("step ") and "sha256" in it["model_version"]
    assert it["threshold"] == 0.5 and it["time"]
    # files hold exactly the viewer's data
    np.testing.assert_array_equal(tifffile.imread(folder / it["image"]), synth_stack.image[2])
    np.testing.assert_array_equal(tifffile.imread(folder / it["label"]), np.asarray(mem.data[2]))
    mask = tifffile.imread(folder / it["mask"])
    assert mask.dtype == np.uint8 and mask[60:70, 80:100].sum() == 0 and mask.sum() == 96 * 112 - 200
    pred = (np.asarray(viewer.layers["em boundary"].data[2]) >= 0.5).astype(np.uint8)
    np.testing.assert_array_equal(tifffile.imread(folder / it["prediction"]), pred)
    # the trainer's loader returns the same arrays
    norm = NormConfig()
    loaded = {s.meta["slice"]: s for s in load_training_folder(folder, norm)}
    assert set(loaded) == {0, 2}
    for z in (0, 2):
        np.testing.assert_array_equal(loaded[z].label, np.asarray(mem.data[z]))
        np.testing.assert_allclose(loaded[z].image, normalize_slice(synth_stack.image[z], norm), rtol=1e-6)
        pred_z = (np.asarray(viewer.layers["em boundary"].data[z]) >= 0.5).astype(np.uint8)
        np.testing.assert_array_equal(loaded[z].corrected, (pred_z != np.asarray(mem.data[z])).astype(np.uint8))
    assert loaded[0].mask is None
    np.testing.assert_array_equal(loaded[2].mask, mask)
    assert loaded[0].corrected.sum() > 0  # the painted pixels are marked as changed
    assert any("Exported 2 slice(s)" in m for m in notes("info"))
    assert tracking.ledger_of(mem).exported == {0, 2}
    assert panel.finetune.folder_edit.text() == str(folder)  # fine-tune picks up the export


def test_export_never_overwrites(qtbot, corrected, tmp_path, notes):
    viewer, panel, mem = corrected
    folder = tmp_path / "set"
    first = panel.export.export(str(folder))
    assert len(first) == 2
    stamp = (folder / "images" / "em_z0000.tif").stat().st_mtime_ns
    assert panel.export.export(str(folder)) == []  # unchanged slices are not duplicated
    assert any("already exported" in m for m in notes("info"))
    y, x = np.argwhere(np.asarray(mem.data[0]) == 1)[0]
    mem.paint((0, int(y), int(x)), 0)  # change slice 0 again -> exported under a new name
    again = panel.export.export(str(folder))
    assert [e["name"] for e in again] == ["em_z0000-1"]
    assert (folder / "images" / "em_z0000.tif").stat().st_mtime_ns == stamp
    assert len(json.loads((folder / "manifest.json").read_text())["items"]) == 3


def test_export_without_corrections_or_folder_says_why(qtbot, panel_viewer, waiter, tmp_path, notes):
    viewer, panel = panel_viewer
    assert panel.export.export(str(tmp_path / "x")) == []
    assert "run Predict" in notes("warning")[0]
    waiter(panel.predict.predict())
    assert panel.export.export("") == []
    assert "folder" in notes("warning")[0]
    assert panel.export.export(str(tmp_path / "x")) == []
    assert "No slice is marked corrected" in notes("warning")[0]
    assert not (tmp_path / "x").exists()


def test_export_error_is_a_notification(qtbot, corrected, tmp_path, notes):
    viewer, panel, mem = corrected
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert panel.export.export(str(blocker)) == []
    errors = notes("error")
    assert len(errors) == 1 and "Export failed" in errors[0]


def test_export_refuses_mismatched_shapes(qtbot, make_napari_viewer, tmp_path, notes):
    from napari_neuroedge._napari.widgets.export import ExportWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((2, 32, 32), np.uint8), name="em")
    labels = viewer.add_labels(np.zeros((2, 30, 30), np.uint8), name="em membranes")  # user-made, wrong size
    w = ExportWidget(viewer)
    assert w.membranes_combo.currentText() == "em membranes"
    tracking.ledger_of(labels).mark_corrected(1)
    assert w.export(str(tmp_path / "set")) == []
    errors = notes("error")
    assert errors == ["Export failed; nothing was overwritten."]
    assert "shapes differ" in w.info.text()  # the cause, in the widget (the toast stays one line)
    assert not (tmp_path / "set" / "images").exists()


def test_export_lists_what_it_writes_and_flags_empty_labels(qtbot, corrected, tmp_path, notes):
    """Before exporting, the widget lists each slice with its labelled, membrane and changed fractions (real
    numbers); an almost empty corrected slice is flagged and needs a second click."""
    from napari_neuroedge._napari.widgets.correct import prediction_of

    viewer, panel, mem = corrected
    e = panel.export
    e.refresh()  # the fixture wrote the ignore layer's data directly (painting it re-lists, see below)
    assert "Will export 2 corrected slice(s)" in e.info.text()
    for z, labelled in ((0, "100%"), (2, "98%")):  # 200 of slice 2's 96 x 112 pixels are ignored
        label = np.asarray(mem.data[z]) > 0
        keep = np.ones(label.shape, bool) if z == 0 else np.asarray(viewer.layers["em ignore"].data[2]) == 0
        membrane = label[keep].mean()
        changed = (prediction_of(viewer, mem, z) != label)[keep].mean()
        assert 0.05 < membrane < 0.6 and 0 < changed < 0.05
        assert f"slice {z}: {labelled} labelled, {membrane:.1%} membrane, {changed:.1%} changed by you" in e.info.text()
    assert f"2 corrected slice(s), {96 * 112 * 2 - 200:,} labelled pixels" in e.info.text()
    assert "Warning" not in e.info.text()
    ignore = viewer.layers["em ignore"]
    ignore.brush_size = 40
    ignore.paint((0, 50, 50), 1)  # ignore paint is training data too: the list follows it
    ignored = int((np.asarray(ignore.data[0]) > 0).sum())
    assert 500 < ignored < 3000
    qtbot.waitUntil(lambda: f"slice 0: {1 - ignored / (96 * 112):.0%} labelled" in e.info.text(), timeout=2000)
    # slice 1 wiped and marked corrected: flagged; the first click writes nothing
    mem.data[1] = 0
    panel.correct.set_corrected(mem, 1, True)
    qtbot.waitUntil(lambda: "Warning: slice 1" in e.info.text(), timeout=2000)
    assert "Warning: slice 1: almost no membrane labelled (0.0%); is it really corrected?" in e.info.text()
    folder = tmp_path / "set"
    assert e.export(str(folder)) == [] and not (folder / "manifest.json").exists()
    assert "Check the 1 warning(s) under Export" in notes("warning")[0]
    assert e.info.text().startswith("Not exported yet. Will export 3 corrected slice(s)")
    # a change of the data drops the pending confirmation; the same data asked twice exports
    mem.paint((0, 5, 5), 1)
    assert e.export(str(folder)) == []
    assert len(e.export(str(folder))) == 3
    assert e.export_button.text() == "Export corrected slices"
