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
