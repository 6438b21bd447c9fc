"""The README screenshot: napari with the NeuroEdge panel after predicting a real EM slice (ISBI 2012 test volume,
opened with the plugin's reader) with the bundled default model and the panel's default settings.

Written to pytest's temporary folder; with ``NEUROEDGE_WRITE_SCREENSHOT=1`` to docs/screenshot.png (the README's).
Skipped where the ISBI data is absent. The test checks it is a real picture with the membranes in their colour
and that the panel shows the default model, not a test model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parents[2] / "docs"
ENV_WRITE = "NEUROEDGE_WRITE_SCREENSHOT"


def _membrane_coloured(rgb: np.ndarray) -> np.ndarray:
    """Pixels showing the cyan membrane labels (blended over grey EM): low red, high and equal green / blue."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return (g > 140) & (b > 140) & (g - r > 60) & (np.abs(g - b) < 40)


def test_screenshot_with_panel(qtbot, make_napari_viewer, waiter, isbi_dir, tmp_path):
    from skimage.io import imsave

    from napari_neuroedge._napari.widgets import NeuroEdgePanel

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1400, 860)
    [image] = viewer.open(str(isbi_dir / "test-volume.tif"), plugin="napari-neuroedge")
    assert image.data.shape == (30, 512, 512)
    panel = NeuroEdgePanel(viewer)
    viewer.window.add_dock_widget(panel, name="NeuroEdge", area="right")
    p = panel.predict
    assert p.model_combo.currentText() == "default" and p.tile_spin.value() == 0  # what a user starts with: auto
    assert p.image_combo.currentText() == image.name
    viewer.dims.set_point(0, image.data_to_world([12, 0, 0])[0])
    job = waiter(p.predict(scope="current slice"), timeout=300)
    assert job.state == "done"
    membranes = viewer.layers[f"{image.name} membranes"]
    assert np.asarray(membranes.data[12]).mean() > 0.1 and np.asarray(membranes.data[11]).max() == 0
    assert "U-Net" in p.model_info.text() and "tiny" not in p.model_info.text()
    viewer.layers[f"{image.name} boundary"].visible = False  # EM + membranes read best in a small picture
    viewer.reset_view()
    qtbot.wait(300)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    assert shot.ndim == 3 and shot.shape[2] in (3, 4) and min(shot.shape[:2]) > 300
    rgb = shot[..., :3]
    assert rgb.std() > 20 and len(np.unique(rgb.reshape(-1, 3), axis=0)) > 500  # not uniform
    assert _membrane_coloured(rgb).sum() > 2000  # the membrane labels show in their colour
    canvas = viewer.screenshot(canvas_only=True, flash=False)[..., :3]
    assert _membrane_coloured(canvas).mean() > 0.03
    out_dir = DOCS if os.environ.get(ENV_WRITE, "").strip() in ("1", "true", "yes") else tmp_path
    out_dir.mkdir(exist_ok=True)
    tmp = out_dir / ".screenshot.part.png"
    imsave(tmp, rgb, check_contrast=False)
    os.replace(tmp, out_dir / "screenshot.png")
    assert (out_dir / "screenshot.png").stat().st_size > 10_000


def test_screenshot_of_the_finetune_plots(qtbot, make_napari_viewer, waiter, isbi_dir, tmp_path):
    """The Fine-tune tab after a short run of the default model on one ISBI slice whose membranes were corrected
    to the ground truth: the loss and held-out curves (pyqtgraph), the kept step marked, the done message.
    Written to docs/finetune.png with ``NEUROEDGE_WRITE_SCREENSHOT=1``."""
    from dataclasses import replace

    import tifffile

    from napari_neuroedge._napari.widgets import NeuroEdgePanel

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1400, 980)
    [image] = viewer.open(str(isbi_dir / "train-volume.tif"), plugin="napari-neuroedge")
    panel = NeuroEdgePanel(viewer)
    viewer.window.add_dock_widget(panel, name="NeuroEdge", area="right")
    viewer.dims.set_point(0, image.data_to_world([0, 0, 0])[0])
    waiter(panel.predict.predict(scope="current slice"), timeout=300)
    mem = viewer.layers[f"{image.name} membranes"]
    truth = (tifffile.imread(isbi_dir / "train-labels.tif", key=0) == 0).astype(np.uint8)  # 0 = membrane there
    panel.correct.set_corrected(mem, 0, True)  # keeps the prediction as the one corrected
    mem.data[0] = truth
    mem.refresh()
    ft = panel.finetune
    ft.save_edit.setText(str(tmp_path / "models"))
    ft.steps_spin.setValue(40)
    ft.time_spin.setValue(900)  # the steps end it, not the clock of a busy machine
    ft.crop_spin.setValue(160)
    ft.batch_spin.setValue(2)
    options = ft.options
    ft.options = lambda: replace(options(), val_every=10)  # a few validations in a short run
    panel.tabs.setCurrentIndex(3)
    job = waiter(ft.finetune(confirmed=True), timeout=600)
    assert job.state == "done", job.error
    waiter(job.extra["repredict"], timeout=300)
    assert len(ft.loss_plot.series["loss"]) == 40 and len(ft.val_plot.series["F1"]) == 4
    # the kept model: a validated step, or the parent (its step-0 validation) where the guard kept it
    assert ft.val_plot.kept_step == (0 if job.result.parent_kept else ft.val_plot.kept_step) in (0, 10, 20, 30, 40)
    ft.advanced.collapse(animate=False)
    area = panel.tabs.widget(3)
    area.verticalScrollBar().setValue(area.verticalScrollBar().maximum())  # the message and both plots
    assert area.horizontalScrollBar().maximum() == 0  # nothing wider than the dock
    qtbot.wait(300)  # (a picture, not an assertion: let the plots repaint)
    shot = panel.grab().toImage()
    assert shot.width() > 300 and shot.height() > 300
    out_dir = DOCS if os.environ.get(ENV_WRITE, "").strip() in ("1", "true", "yes") else tmp_path
    out_dir.mkdir(exist_ok=True)
    tmp = out_dir / ".finetune.part.png"
    assert shot.save(str(tmp))
    os.replace(tmp, out_dir / "finetune.png")
    assert (out_dir / "finetune.png").stat().st_size > 10_000
