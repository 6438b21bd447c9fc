"""Predict widget driven like a user: settings, click, layers filled / updated in place, errors as notifications."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_neuroedge._napari import tracking
from napari_neuroedge._napari.widgets.forms import TTA_CHOICES


def _click(qtbot, button):
    from qtpy.QtCore import Qt

    qtbot.mouseClick(button, Qt.LeftButton)


def test_predict_all_slices_fills_layers(qtbot, panel_viewer, synth_stack, waiter):
    viewer, panel = panel_viewer
    p = panel.predict
    p.tta_combo.setCurrentText("8 (full dihedral)")
    p.uncertainty_check.setChecked(True)
    p.instances_check.setChecked(True)
    p.scope_combo.setCurrentText("all slices")
    p.threshold_spin.setValue(0.5)
    p.seed_spin.setValue(0.2)
    _click(qtbot, p.run_button)
    job = p.job
    assert job is not None and job.worker is not None  # a background worker
    assert not p.run_button.isEnabled()
    from napari.utils import progress

    assert isinstance(job.pbar, progress)  # napari's progress bar (activity dock)
    pbar = job.pbar
    waiter(job)
    assert job.state == "done"
    assert p.run_button.isEnabled()
    assert job.pbar is None and pbar.n == pbar.total > 0  # ran to the end, then closed
    assert p.jobs.bar.value() == p.jobs.bar.maximum() > 0
    for suffix in ("boundary", "membranes", "instances", "uncertainty"):
        assert f"em {suffix}" in viewer.layers
    boundary, membranes = viewer.layers["em boundary"], viewer.layers["em membranes"]
    inst, unc = viewer.layers["em instances"], viewer.layers["em uncertainty"]
    assert type(boundary).__name__ == "Image" and boundary.data.dtype == np.float32
    assert type(membranes).__name__ == "Labels" and membranes.data.dtype == np.uint8
    assert inst.data.dtype == np.uint32 and unc.data.dtype == np.float32
    for layer in (boundary, membranes, inst, unc):
        assert layer.data.shape == (3, 96, 112)
        np.testing.assert_allclose(layer.scale, [2.0, 1.5, 1.5])
        np.testing.assert_allclose(layer.translate, [0.0, 10.0, 5.0])
    prob = np.asarray(boundary.data)
    np.testing.assert_array_equal(membranes.data, (prob >= 0.5).astype(np.uint8))
    # the tiny model finds the synthetic membranes: mostly right, and a real mix of both classes
    gt = synth_stack.membrane > 0
    acc = float(((prob >= 0.5) == gt).mean())
    assert acc > 0.85, acc
    assert 0.05 < float(membranes.data.mean()) < 0.5
    # instances: ids unique across the stack (slice z's cells are z * H * W + 1..n, as the CLI numbers them),
    # membranes included in cells, seeded below the widget's seed threshold
    from napari_neuroedge.inference.postprocess import instances_from_probability

    for z in range(3):
        ids = np.unique(inst.data[z])
        plane = 96 * 112
        assert ids.min() >= z * plane + 1 and ids.max() < (z + 1) * plane
        assert len(ids) > 3
        np.testing.assert_array_equal(inst.data[z] - z * plane, instances_from_probability(prob[z], 0.2))
    assert any(not np.array_equal(instances_from_probability(prob[z], 0.2), instances_from_probability(prob[z]))
               for z in range(3))  # so the check above sees the widget's setting, not the default
    assert float(unc.data.max()) > 0 and float(unc.data.min()) >= 0
    assert tracking.ledger_of(membranes).predicted == {0, 1, 2}
    # outputs are not offered as inputs; the membrane layer is offered for correcting
    assert [p.image_combo.itemText(i) for i in range(p.image_combo.count())] == ["em"]
    assert panel.correct.membranes_combo.currentText() == "em membranes"
    assert tracking.ledger_of(membranes).model_of(1)["model"] == tiny_name(panel)


def tiny_name(panel) -> str:
    return panel.predict.session.selected_model


def test_current_slice_only_and_in_place(qtbot, panel_viewer, waiter, goto):
    viewer, panel = panel_viewer
    p = panel.predict
    image = viewer.layers["em"]
    goto(viewer, image, 1)
    p.scope_combo.setCurrentText("current slice")
    waiter(p.predict())
    boundary = viewer.layers["em boundary"]
    data = np.asarray(boundary.data)
    assert data[1].max() > 0.5 and data[0].max() == 0 and data[2].max() == 0  # only slice 1 predicted
    n_layers = len(viewer.layers)
    membranes = viewer.layers["em membranes"]
    assert len(p.session.predictors) == 1
    [prepared] = p.session.predictors.predictors()
    goto(viewer, image, 2)
    waiter(p.predict())
    # the second click ran the model the first one prepared (no rebuild, no second copy)
    assert p.session.predictors.predictors() == [prepared]
    assert len(viewer.layers) == n_layers  # no new layers piled up
    assert viewer.layers["em boundary"] is boundary and viewer.layers["em membranes"] is membranes
    assert np.asarray(boundary.data)[2].max() > 0.5 and np.asarray(boundary.data)[0].max() == 0
    np.testing.assert_array_equal(np.asarray(boundary.data)[1], data[1])  # untouched slice stays


def test_membranes_stay_selected_when_instances_are_added(qtbot, panel_viewer, waiter):
    """A second run that adds the instances (and uncertainty) layers leaves the membranes layer selected, so the
    next brush stroke paints membranes, not instance ids."""
    viewer, panel = panel_viewer
    p = panel.predict
    waiter(p.predict(scope="current slice"))
    membranes = viewer.layers["em membranes"]
    assert viewer.layers.selection.active is membranes
    viewer.layers.selection.active = viewer.layers["em"]  # the user looked at the image meanwhile
    p.instances_check.setChecked(True)
    p.tta_combo.setCurrentText("6 (rotations + flips)")
    p.uncertainty_check.setChecked(True)
    waiter(p.predict(scope="current slice"))
    assert "em instances" in viewer.layers and "em uncertainty" in viewer.layers
    assert viewer.layers.selection.active is membranes
    assert viewer.layers.selection == {membranes}
    waiter(p.predict(scope="current slice"))  # nothing added: the user's own selection is left alone
    viewer.layers.selection.active = viewer.layers["em"]
    waiter(p.predict(scope="current slice"))
    assert viewer.layers.selection.active is viewer.layers["em"]


def test_predict_2d_image_and_defaults(qtbot, make_napari_viewer, waiter, tiny_checkpoint):
    from napari_neuroedge._napari.widgets.predict import PredictWidget
    from napari_neuroedge.io.sample import synthetic_em

    viewer = make_napari_viewer()
    img = synthetic_em((80, 72), cell_size=20, seed=5).image
    viewer.add_image(img, name="plane")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w.model_combo.currentText() == "default"  # the bundled model is preselected
    assert w.tile_spin.value() == 0 and w.context_spin.value() == 0  # 0 = auto, the model's context
    assert list(TTA_CHOICES.values()) == [1, 6, 8]
    assert not w.uncertainty_check.isEnabled()  # needs TTA
    assert w.device_combo.itemText(0) == "auto" and "cpu" in w.device_found.text()
    w.load_checkpoint(str(tiny_checkpoint))
    w.tile_spin.setValue(64)
    waiter(w.predict())
    mem = viewer.layers["plane membranes"]
    assert mem.data.shape == (80, 72) and 0 < mem.data.mean() < 0.6


def test_predict_runs_with_bundled_default_model(qtbot, make_napari_viewer, waiter):
    """The shipped model loads and predicts (its quality is not tested: it may still be a placeholder)."""
    from napari_neuroedge._napari.widgets.predict import PredictWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8), name="noise")
    w = PredictWidget(viewer)
    w.tile_spin.setValue(64)
    job = waiter(w.predict())
    assert job.state == "done"
    prob = np.asarray(viewer.layers["noise boundary"].data)
    assert prob.shape == (64, 64) and np.isfinite(prob).all() and 0 <= prob.min() <= prob.max() <= 1


def test_rgb_layer_is_refused_with_a_notification(qtbot, make_napari_viewer, notes):
    from napari_neuroedge._napari.widgets.predict import PredictWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="colour", rgb=True)
    viewer.add_image(np.zeros((2, 3, 32, 32), np.uint8), name="4d")
    w = PredictWidget(viewer)
    assert w.image_combo.findText("colour") == -1  # RGB layers are not offered
    assert w._check_image(viewer.layers["colour"]) is None
    # a layer Predict cannot use is a warning, whatever the reason (RGB, hidden, 4D): the user's input, no fault
    warnings = notes("warning")
    assert len(warnings) == 1 and "RGB" in warnings[0] and "grayscale" in warnings[0]
    w.image_combo.set_layer("4d")
    assert w.predict() is None
    warnings = notes("warning")
    assert warnings == ["'4d' cannot be predicted."] and "4D" in w.jobs.status.text()
    assert len(viewer.layers) == 2


def test_corrupt_checkpoint_shows_error_and_keeps_selection(qtbot, make_napari_viewer, tmp_path, notes,
                                                            monkeypatch):
    from napari_neuroedge._napari.state import LOAD_CHECKPOINT
    from napari_neuroedge._napari.widgets.predict import PredictWidget

    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"\x80\x02this is not a torch file")
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(3)}, plain)
    viewer = make_napari_viewer()
    w = PredictWidget(viewer)
    before = w.session.selected_model
    for path in (bad, plain):
        monkeypatch.setattr(w, "_ask_checkpoint_path", lambda p=path: str(p))
        idx = w.model_combo.findText(LOAD_CHECKPOINT)
        w.model_combo.setCurrentIndex(idx)
        w.model_combo.activated.emit(idx)  # what a user's click in the list emits
        errors = notes("error")
        assert errors == [f"{path.name} is not a NeuroEdge model."], errors
        assert str(path) in w.jobs.status.text()
        assert w.session.selected_model == before and w.model_combo.currentText() == before
    assert "broken" not in w.session.models and "plain" not in w.session.models


def test_cancel_prediction_leaves_layers_unchanged(panel_viewer, waiter, notes, start_cancellable_prediction):
    viewer, panel = panel_viewer
    p = panel.predict
    job = start_cancellable_prediction(p)
    p.jobs.cancel_button.click()
    waiter(job)
    assert job.state == "cancelled"
    assert "em boundary" not in viewer.layers and "em membranes" not in viewer.layers
    assert any("cancelled" in m for m in notes("info"))
    assert "cancelled" in p.jobs.status.text()
    assert p.run_button.isEnabled()


def test_running_job_blocks_a_second_prediction(qtbot, panel_viewer, waiter, notes):
    viewer, panel = panel_viewer
    p = panel.predict
    p.tile_spin.setValue(32)
    p.scope_combo.setCurrentText("all slices")
    job = p.predict()
    assert job is not None and job.running
    assert p.session.jobs.start("again", {"layer:em"}, lambda j: iter(())) is None
    warnings = notes("warning")
    assert len(warnings) == 1 and "still running" in warnings[0]
    job.cancel()
    waiter(job)


def test_threshold_follows_the_chosen_models_calibration(qtbot, make_napari_viewer, waiter, tiny_checkpoint,
                                                          tmp_path):
    """Choosing a calibrated model sets the threshold box to its threshold and prediction uses it; the user's own
    value stays until another model is chosen."""
    import dataclasses

    from napari_neuroedge._napari.widgets.predict import PredictWidget
    from napari_neuroedge.models.checkpoint import load_checkpoint, save_checkpoint
    from napari_neuroedge.io.sample import synthetic_em

    calibrated = save_checkpoint(dataclasses.replace(load_checkpoint(tiny_checkpoint), threshold=0.7),
                                 tmp_path / "calibrated.pt")
    viewer = make_napari_viewer()
    viewer.add_image(synthetic_em((80, 72), cell_size=20, seed=5).image, name="plane")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.tile_spin.setValue(64)
    w.load_checkpoint(str(calibrated))
    assert w.threshold_spin.value() == pytest.approx(0.7) and "threshold 0.7" in w.model_info.text()
    waiter(w.predict())
    prob = np.asarray(viewer.layers["plane boundary"].data)
    mem = np.asarray(viewer.layers["plane membranes"].data)
    assert ((prob >= 0.7) != (prob >= 0.5)).any()  # the two thresholds give different membranes here
    np.testing.assert_array_equal(mem, (prob >= 0.7).astype(mem.dtype))
    w.threshold_spin.setValue(0.55)
    w._refresh_models()  # the model list changes (e.g. a fine-tune finished): the user's value stays
    assert w.threshold_spin.value() == pytest.approx(0.55)
    w.load_checkpoint(str(tiny_checkpoint))  # an uncalibrated model
    assert w.threshold_spin.value() == pytest.approx(0.5)


def test_form_values_persist_but_thresholds_follow_the_model(qtbot, make_napari_viewer, tiny_checkpoint, tmp_path):
    """Re-creating the widget (a new session) restores tile, TTA, scope and outputs; the thresholds are the chosen
    model's calibrated ones, not the last session's, and "replace my corrections" is off again."""
    import dataclasses
    import json

    from napari_neuroedge._napari.widgets.predict import PredictWidget
    from napari_neuroedge.models.checkpoint import load_checkpoint, save_checkpoint

    calibrated = save_checkpoint(dataclasses.replace(load_checkpoint(tiny_checkpoint), threshold=0.7,
                                                     seed_threshold=0.3), tmp_path / "calibrated.pt")
    w = PredictWidget(make_napari_viewer())
    default = w.session.checkpoint(w.session.selected_model)
    w.tile_spin.setValue(256)
    w.tta_combo.setCurrentText("6 (rotations + flips)")
    w.scope_combo.setCurrentText("all slices")
    w.instances_check.setChecked(True)
    w.uncertainty_check.setChecked(True)
    w.overwrite_check.setChecked(True)
    w.threshold_spin.setValue(0.85)
    w.seed_spin.setValue(0.9)
    path = tmp_path / "settings" / "predict.json"  # the tests' settings dir, never the real home
    assert json.loads(path.read_text()) == {"tile": 256, "tta": 6, "scope": "all slices", "instances": True,
                                            "uncertainty": True}
    w.close()

    again = PredictWidget(make_napari_viewer())
    assert again.tile_spin.value() == 256 and again.tta() == 6 and again.scope_combo.currentText() == "all slices"
    assert again.instances_check.isChecked() and again.uncertainty_check.isChecked()
    assert not again.overwrite_check.isChecked()
    assert again.threshold_spin.value() == pytest.approx(default.threshold) != pytest.approx(0.85)
    assert again.seed_spin.value() == pytest.approx(default.seed_threshold)
    again.load_checkpoint(str(calibrated))
    assert again.threshold_spin.value() == pytest.approx(0.7) and again.seed_spin.value() == pytest.approx(0.3)


def test_unusable_saved_values_fall_back_to_the_defaults(make_napari_viewer, tmp_path):
    """A device that is gone or a value out of range is skipped; an unreadable file is ignored."""
    from napari_neuroedge._napari.widgets.predict import PredictWidget

    settings = tmp_path / "settings"
    settings.mkdir()
    (settings / "predict.json").write_text('{"device": "tpu:7", "tile": 99999, "context": 16}')
    w = PredictWidget(make_napari_viewer())
    assert w.device_combo.currentText() == "auto" and w.session.state.device == "auto"
    assert w.tile_spin.value() == 0 and w.context_spin.value() == 16
    (settings / "predict.json").write_text("{not json")
    assert PredictWidget(make_napari_viewer()).context_spin.value() == 0
