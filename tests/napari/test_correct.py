"""Correct widget: brush presets, edit tracking from paint events, overlay toggle, difference view, uncertainty."""

from __future__ import annotations

import json

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_neuroedge._napari import tracking
from napari_neuroedge._napari.widgets.correct import (BRUSH_PRESETS, TOGGLE_KEY, next_uncertain_slice,
                                                       toggle_prediction)


@pytest.fixture
def predicted(panel_viewer, waiter):
    viewer, panel = panel_viewer
    panel.predict.tta_combo.setCurrentText("6 (rotations + flips)")
    panel.predict.uncertainty_check.setChecked(True)
    panel.predict.scope_combo.setCurrentText("all slices")
    waiter(panel.predict.predict())
    return viewer, panel, viewer.layers["em membranes"]


def _cell_pixel(layer, z):
    """A (z, y, x) data position inside a cell (label 0) well away from membranes."""
    from scipy import ndimage as ndi

    dist = ndi.distance_transform_edt(np.asarray(layer.data[z]) == 0)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    assert dist[y, x] >= 4
    return int(y), int(x)


def test_paint_is_tracked_and_listed(qtbot, predicted, goto):
    viewer, panel, mem = predicted
    c = panel.correct
    assert c.membranes_combo.currentText() == "em membranes"
    assert c.slice_list.count() == 0
    goto(viewer, viewer.layers["em"], 2)
    qtbot.mouseClick(c.brush_buttons[3], Qt.LeftButton)
    assert mem.brush_size == 3 and mem.mode == "paint" and mem.selected_label == 1
    assert viewer.layers.selection.active is mem
    y, x = _cell_pixel(mem, 2)
    before = np.asarray(mem.data).copy()
    mem.paint((2, y, x), 1)  # what a brush stroke does
    changed = np.argwhere(np.asarray(mem.data) != before)
    assert len(changed) > 0 and set(changed[:, 0]) == {2}
    meta = tracking.ledger_of(mem)
    assert meta.edited == {2} and meta.corrected == {2}
    assert c.slice_list.count() == 1
    item = c.slice_list.item(0)
    assert item.data(Qt.UserRole) == 2 and item.checkState() == Qt.Checked and "edited" in item.text()
    # the user unticks it: not corrected any more, still edited
    item.setCheckState(Qt.Unchecked)
    assert meta.corrected == set() and meta.edited == {2}
    # erase on slice 0 is tracked too; undo works as in napari
    mem.mode = "erase"
    y0, x0 = np.argwhere(np.asarray(mem.data[0]) == 1)[0]
    mem.paint((0, int(y0), int(x0)), 0)
    assert meta.edited == {0, 2}
    assert mem.data[0, y0, x0] == 0
    mem.undo()
    assert mem.data[0, y0, x0] == 1
    # mark / unmark the slice on screen
    goto(viewer, viewer.layers["em"], 1)
    qtbot.mouseClick(c.mark_button, Qt.LeftButton)
    assert meta.corrected == {0, 1}
    assert [c.slice_list.item(i).data(Qt.UserRole) for i in range(c.slice_list.count())] == [0, 1, 2]
    qtbot.mouseClick(c.unmark_button, Qt.LeftButton)
    assert meta.corrected == {0}
    assert [c.slice_list.item(i).data(Qt.UserRole) for i in range(c.slice_list.count())] == [0, 2]
    # double click goes to the slice
    c._on_item_double_clicked(c.slice_list.item(1))
    assert tracking.current_slice(viewer, mem) == 2


def test_brush_presets(qtbot, predicted):
    _, panel, mem = predicted
    assert BRUSH_PRESETS == (1, 2, 3, 5)
    for size in (5, 1, 3, 2):
        panel.correct.brush_buttons[size].click()
        assert mem.brush_size == size and mem.mode == "paint"
    panel.correct.erase_button.click()
    assert mem.mode == "erase"


def test_toggle_overlay_button_and_key(qtbot, predicted):
    viewer, panel, mem = predicted
    boundary = viewer.layers["em boundary"]
    assert boundary.visible
    panel.correct.toggle_button.click()
    assert not boundary.visible
    # the key is bound on the membrane layer (active while brushing)
    bound = [str(k) for k in mem.keymap]
    assert any(k.lower() == TOGGLE_KEY for k in bound), bound
    callback = next(v for k, v in mem.keymap.items() if str(k).lower() == TOGGLE_KEY)
    callback(mem)
    assert boundary.visible
    assert toggle_prediction(viewer, mem) is False


def test_difference_to_prediction(qtbot, predicted):
    viewer, panel, mem = predicted
    c = panel.correct
    y, x = _cell_pixel(mem, 1)
    mem.paint((1, y, x), 1)  # add membrane where the model saw none
    ym, xm = np.argwhere(np.asarray(mem.data[0]) == 1)[0]
    mem.paint((0, int(ym), int(xm)), 0)  # remove some membrane
    c.diff_check.setChecked(True)
    diff = viewer.layers["em difference"]
    assert diff.visible
    d = np.asarray(diff.data)
    expected_added = (np.asarray(mem.data[1]) == 1) & (np.asarray(viewer.layers["em boundary"].data[1]) < 0.5)
    np.testing.assert_array_equal(d[1] == 1, expected_added)
    assert d[1, y, x] == 1 and (d[1] == 2).sum() == 0
    assert d[0, ym, xm] == 2 and (d[0] == 1).sum() == 0
    assert (d[2] == 0).all()
    # painting again updates the view
    y2, x2 = _cell_pixel(mem, 2)
    mem.paint((2, y2, x2), 1)
    qtbot.waitUntil(lambda: np.asarray(diff.data)[2, y2, x2] == 1, timeout=2000)
    c.diff_check.setChecked(False)
    assert not diff.visible


def test_next_most_uncertain_slice(qtbot, predicted, goto):
    viewer, panel, mem = predicted
    unc = viewer.layers["em uncertainty"]
    # make the ranking unambiguous: slice 0 most uncertain, then 2, then 1
    for z, v in ((0, 0.2), (1, 0.01), (2, 0.1)):
        unc.data[z] = v
    goto(viewer, viewer.layers["em"], 1)
    assert panel.correct.go_next_uncertain() == 0
    assert tracking.current_slice(viewer, mem) == 0
    # clicking again without correcting moves on down the ranking (it stayed on slice 0), then starts over
    assert [panel.correct.go_next_uncertain() for _ in range(3)] == [2, 1, 0]
    assert tracking.current_slice(viewer, mem) == 0
    tracking.ledger_of(mem).mark_corrected(0)
    assert panel.correct.go_next_uncertain() == 2
    tracking.ledger_of(mem).mark_corrected(1)
    tracking.ledger_of(mem).mark_corrected(2)
    assert next_uncertain_slice(viewer, mem) is None
    assert panel.correct.go_next_uncertain() is None


def test_next_uncertain_without_uncertainty_says_what_to_do(qtbot, panel_viewer, waiter, notes):
    viewer, panel = panel_viewer
    waiter(panel.predict.predict())
    assert panel.correct.go_next_uncertain() is None
    warnings = notes("warning")
    assert len(warnings) == 1 and "TTA" in warnings[0]


def test_repredict_keeps_corrections(qtbot, predicted, waiter, goto):
    viewer, panel, mem = predicted
    goto(viewer, viewer.layers["em"], 1)
    y, x = _cell_pixel(mem, 1)
    mem.paint((1, y, x), 1)
    corrected = np.asarray(mem.data[1]).copy()
    panel.predict.scope_combo.setCurrentText("all slices")
    job = waiter(panel.predict.predict())
    assert job.state == "done"
    np.testing.assert_array_equal(mem.data[1], corrected)  # the user's edit survives
    assert "Kept your corrections on slice(s) 1" in panel.predict.jobs.status.text()
    panel.predict.overwrite_check.setChecked(True)
    waiter(panel.predict.predict())
    assert mem.data[1, y, x] == 0  # replaced on request
    assert tracking.ledger_of(mem).edited == set()


def test_ignore_layer(qtbot, predicted):
    viewer, panel, mem = predicted
    ignore = panel.correct.add_ignore_layer()
    assert ignore.name == "em ignore" and ignore.data.shape == mem.data.shape
    assert viewer.layers.selection.active is ignore and ignore.mode == "paint"
    np.testing.assert_allclose(ignore.scale, mem.scale)
    assert panel.correct.add_ignore_layer() is ignore  # no duplicates


@pytest.fixture
def one_predicted(panel_viewer, waiter, goto):
    """Only slice 0 predicted: slices 1 and 2 have an empty membrane layer and no prediction."""
    viewer, panel = panel_viewer
    goto(viewer, viewer.layers["em"], 0)
    waiter(panel.predict.predict(scope="current slice"))
    mem = viewer.layers["em membranes"]
    assert tracking.ledger_of(mem).predicted == {0} and not np.asarray(mem.data[2]).any()
    return viewer, panel, mem


def test_stroke_on_unpredicted_slice_is_not_training_data(qtbot, one_predicted, goto, tmp_path, notes):
    viewer, panel, mem = one_predicted
    goto(viewer, viewer.layers["em"], 2)
    mem.paint((2, 40, 50), 1)  # one stroke on a slice the model never saw: the rest of it is still 0
    meta = tracking.ledger_of(mem)
    assert meta.edited == {2} and meta.corrected == set() and meta.scratch == {2}
    assert any("Slice 2 was never predicted" in m for m in notes("warning"))
    item = panel.correct.slice_list.item(0)
    assert item.checkState() == Qt.Unchecked and "never predicted" in item.text()
    assert "painted but never predicted, so NOT training data" in panel.correct.summary.text()
    # neither Export nor Fine-tune takes it, and both say why
    folder = tmp_path / "set"
    assert panel.export.export(str(folder)) == [] and not folder.exists()
    assert "No slice is marked corrected" in notes("warning")[0]
    qtbot.waitUntil(lambda: "Not included: slice 2, painted but never predicted" in panel.export.info.text(),
                    timeout=2000)
    assert panel.finetune.finetune() is None and panel.finetune.job is None
    assert "Slices painted without a prediction are not ticked" in notes("warning")[0]
    assert "Not included: slice 2" in panel.finetune.data_label.text()


def test_mark_unpredicted_slice_corrected_states_its_meaning(qtbot, one_predicted, goto, tmp_path, notes):
    viewer, panel, mem = one_predicted
    goto(viewer, viewer.layers["em"], 2)
    mem.paint((2, 40, 50), 1)
    notes()
    assert panel.correct.mark_current(True) == 2
    meta = tracking.ledger_of(mem)
    assert meta.corrected == {2} and 2 in meta.scratch
    fraction = float(np.mean(np.asarray(mem.data[2]) > 0))
    assert 0 < fraction < 0.01
    text = panel.correct.summary.text()
    assert "Slice 2 was never predicted, so marking it corrected declares ALL its labels ground truth" in text
    assert f"({fraction:.1%} of the slice is membrane now)" in text
    assert text.count("never predicted") == 1  # said once, not by both the mark and the list's summary
    assert notes("info") == ["Slice 2 marked corrected: its labels are now ground truth everywhere."]
    assert panel.correct.slice_list.item(0).checkState() == Qt.Checked
    # Export lists it as drawn from scratch and flags its almost empty labels: the first click only warns
    e = panel.export
    qtbot.waitUntil(lambda: "slice 2: 100% labelled" in e.info.text(), timeout=2000)
    assert (f"slice 2: 100% labelled, {fraction:.1%} membrane, labels drawn from scratch (never predicted)"
            in e.info.text())
    folder = tmp_path / "set"
    e.folder_edit.setText(str(folder))
    qtbot.mouseClick(e.export_button, Qt.LeftButton)
    assert not (folder / "manifest.json").exists()
    assert e.export_button.text().startswith("Export anyway")
    assert f"Warning: slice 2: almost no membrane labelled ({fraction:.1%}); is it really corrected?" in e.info.text()
    assert any("click again to export anyway" in m for m in notes("warning"))
    qtbot.mouseClick(e.export_button, Qt.LeftButton)  # confirmed
    items = json.loads((folder / "manifest.json").read_text())["items"]
    assert [it["slice"] for it in items] == [2] and not items[0].get("prediction")  # no prediction to pretend
    assert e.export_button.text() == "Export corrected slices"


def test_difference_view_keeps_the_prediction_that_was_corrected(qtbot, predicted, waiter, tiny_checkpoint,
                                                                  tmp_path):
    """A later prediction of a corrected slice by another model (and threshold) leaves the difference view, and
    the prediction Export writes, against the prediction the user corrected."""
    from napari_neuroedge.models.checkpoint import load_checkpoint, save_checkpoint

    viewer, panel, mem = predicted
    boundary = viewer.layers["em boundary"]
    before = (np.asarray(boundary.data[1]) >= 0.5).astype(np.uint8)
    y, x = _cell_pixel(mem, 1)
    mem.paint((1, y, x), 1)
    panel.correct.diff_check.setChecked(True)
    other = load_checkpoint(tiny_checkpoint)  # "the fine-tuned model": other weights, other threshold
    last_bias = [k for k in other.state_dict if k.endswith("bias")][-1]
    other.state_dict[last_bias] = other.state_dict[last_bias] + 1.0
    other.threshold = 0.4
    save_checkpoint(other, tmp_path / "other.pt")
    panel.predict.load_checkpoint(str(tmp_path / "other.pt"))
    assert panel.predict.threshold_spin.value() == pytest.approx(0.4)
    waiter(panel.predict.predict(scope="all slices"))
    label = np.asarray(mem.data[1])
    now = (np.asarray(boundary.data[1]) >= 0.4).astype(np.uint8)
    assert (now != before).sum() > 50  # the new model's prediction of slice 1 differs: the view must not follow it
    expected = tracking.difference_map(label, before)
    np.testing.assert_array_equal(np.asarray(viewer.layers["em difference"].data[1]), expected)
    assert (expected == 1).sum() >= 1 and expected[y, x] == 1
    meta = tracking.ledger_of(mem)
    assert meta.threshold_of(1) == 0.5 and meta.threshold_of(0) == pytest.approx(0.4)
    assert meta.model_of(1)["model"] != meta.model_of(0)["model"] == "other"
    entries = panel.export.export(str(tmp_path / "set"))
    pred = [e for e in entries if e["slice"] == 1][0]["prediction"]
    import tifffile

    np.testing.assert_array_equal(tifffile.imread(tmp_path / "set" / pred), before)


def _count_reads(monkeypatch):
    """Record the slices whose label / ignore / prediction the summaries read (training_data.slice_arrays)."""
    from napari_neuroedge._napari import training_data

    reads: list[int] = []
    real = training_data.slice_arrays

    def counting(viewer, membranes, z):
        reads.append(int(z))
        return real(viewer, membranes, z)

    monkeypatch.setattr(training_data, "slice_arrays", counting)
    return reads


def _run_debounced(panel) -> None:
    """Run the summaries a stroke scheduled now, as their 300 ms debounce timers would, instead of racing them
    with a fixed wait: queued events first (the difference map's 0 ms timer), then each pending timer's slot."""
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()
    for timer in (panel.export._relist, panel.finetune._summary_timer):
        if timer.isActive():
            timer.stop()
            timer.timeout.emit()
    QApplication.processEvents()


def _fresh_summary(viewer, mem):
    """The summary text computed from scratch (no cached rows)."""
    from napari_neuroedge._napari.training_data import viewer_summary

    tracking.drop_rows(mem)
    return viewer_summary(viewer, mem).text


def test_a_stroke_rereads_only_the_slice_it_painted(qtbot, predicted, monkeypatch):
    """Export and Fine-tune share per-slice rows: after a stroke on slice 1 only slice 1 is read again (once, for
    both summaries); an undo reads them all again; the summaries always equal one computed from scratch."""
    viewer, panel, mem = predicted
    reads = _count_reads(monkeypatch)
    for z in range(3):
        mem.paint((z, *_cell_pixel(mem, z)), 1)
    qtbot.waitUntil(lambda: "3 corrected slice(s)" in panel.export.info.text()
                    and "3 corrected slice(s)" in panel.finetune.data_label.text(), timeout=3000)
    assert sorted(reads) == [0, 1, 2]  # one read per slice for the two summaries together
    reads.clear()
    mem.brush_size = 5
    mem.paint((1, *_cell_pixel(mem, 1)), 1)
    _run_debounced(panel)  # both debounced summaries ran
    assert reads == [1]
    shown = panel.export.info.text()
    assert shown.endswith(_fresh_summary(viewer, mem)) and panel.finetune.data_label.text().startswith(
        "Will train on " + _fresh_summary(viewer, mem))
    reads.clear()
    mem.undo()  # napari says nothing about an undo: tracking drops every row of the layer
    _run_debounced(panel)
    assert sorted(reads) == [0, 1, 2]
    assert panel.export.info.text() != shown and panel.export.info.text().endswith(_fresh_summary(viewer, mem))


def test_rows_of_large_slices_are_counted_in_a_thread_once_for_both_summaries(qtbot, predicted, monkeypatch):
    """Slices over ``ROW_LATER_PIXELS`` are read and counted off the GUI thread: the summaries say so, then show
    the counted rows (the same as computed at once); the slice is read once for Export and Fine-tune together."""
    import threading

    from napari_neuroedge._napari import training_data

    viewer, panel, mem = predicted
    monkeypatch.setattr(training_data, "ROW_LATER_PIXELS", 16)
    threads: list[str] = []
    real = training_data.slice_arrays

    def counting(viewer_, membranes, z):
        threads.append(threading.current_thread().name)
        return real(viewer_, membranes, z)

    monkeypatch.setattr(training_data, "slice_arrays", counting)
    mem.paint((1, *_cell_pixel(mem, 1)), 1)
    _run_debounced(panel)
    assert "Counting the labelled pixels of slice 1" in panel.export.info.text()
    assert "Counting the labelled pixels of slice 1" in panel.finetune.data_label.text()
    qtbot.waitUntil(lambda: "Counting" not in panel.export.info.text()
                    and "Counting" not in panel.finetune.data_label.text(), timeout=10_000)
    assert len(threads) == 1 and threads[0].startswith("neuroedge-rows")  # once, in the thread
    monkeypatch.setattr(training_data, "slice_arrays", real)
    assert panel.export.info.text().endswith(_fresh_summary(viewer, mem))
    assert panel.finetune.data_label.text().startswith("Will train on " + _fresh_summary(viewer, mem))


def test_any_ignore_layer_is_tracked_without_recomputing_differences(qtbot, predicted, monkeypatch):
    """An ignore layer the user made (not Correct's button) is tracked: a stroke on it re-reads only its slice,
    and recomputes no difference map; a membrane stroke recomputes the difference of its own slice only."""
    from napari_neuroedge._napari.widgets import correct

    viewer, panel, mem = predicted
    for z in range(3):
        mem.paint((z, *_cell_pixel(mem, z)), 1)
    panel.correct.diff_check.setChecked(True)
    ignore = viewer.add_labels(np.zeros(mem.data.shape, np.uint8), name="em ignore", scale=mem.scale,
                               translate=mem.translate)
    _run_debounced(panel)
    reads = _count_reads(monkeypatch)
    diffs: list[list[int]] = []
    real = correct.update_difference
    monkeypatch.setattr(correct, "update_difference",
                        lambda v, m, slices=None, create=True: diffs.append(sorted(slices)) or real(v, m, slices, create))
    ignore.brush_size = 15
    ignore.paint((2, 40, 50), 1)
    _run_debounced(panel)
    assert reads == [2] and diffs == []
    row = [line for line in panel.export.info.text().splitlines() if line.startswith("  slice 2:")][0]
    labelled = float(np.mean(np.asarray(ignore.data[2]) == 0))
    assert 0.9 < labelled < 1.0 and row.startswith(f"  slice 2: {labelled:.0%} labelled")
    assert panel.export.info.text().endswith(_fresh_summary(viewer, mem))
    reads.clear()
    mem.paint((0, *_cell_pixel(mem, 0)), 1)
    _run_debounced(panel)
    assert reads == [0] and diffs == [[0]]
