"""A screenshot of the viewer with the NeuroEdge panel docked, after predicting the sample stack.

Saved to docs/screenshot.png (for the README); the test checks it is a real picture with the membrane colour.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _membrane_coloured(rgb: np.ndarray) -> np.ndarray:
    """Pixels showing the cyan membrane labels (blended over grey EM): low red, high and equal green / blue."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return (g > 140) & (b > 140) & (g - r > 60) & (np.abs(g - b) < 40)


def test_screenshot_with_panel(qtbot, make_napari_viewer, tiny_checkpoint, waiter):
    from skimage.io import imsave

    from napari_neuroedge._napari.widgets import NeuroEdgePanel

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 860)
    viewer.open_sample("napari-neuroedge", "synthetic_em")
    assert [ly.name for ly in viewer.layers] == ["synthetic EM", "synthetic EM ground truth"]
    panel = NeuroEdgePanel(viewer)
    viewer.window.add_dock_widget(panel, name="NeuroEdge", area="right")
    p = panel.predict
    p.load_checkpoint(str(tiny_checkpoint))
    assert p.image_combo.currentText() == "synthetic EM"
    p.tile_spin.setValue(128)
    p.tta_combo.setCurrentText("6 (rotations + flips)")
    p.uncertainty_check.setChecked(True)
    job = waiter(p.predict())
    assert job.state == "done"
    viewer.layers["synthetic EM boundary"].visible = False  # EM + membranes read best in a small picture
    viewer.reset_view()
    qtbot.wait(200)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    assert shot.ndim == 3 and shot.shape[2] in (3, 4) and min(shot.shape[:2]) > 300
    rgb = shot[..., :3]
    assert rgb.std() > 20 and len(np.unique(rgb.reshape(-1, 3), axis=0)) > 500  # not uniform
    coloured = _membrane_coloured(rgb)
    assert coloured.sum() > 2000, coloured.sum()  # the membrane labels show in their colour
    canvas = viewer.screenshot(canvas_only=True, flash=False)[..., :3]
    assert _membrane_coloured(canvas).mean() > 0.03
    DOCS.mkdir(exist_ok=True)
    tmp = DOCS / ".screenshot.part.png"
    imsave(tmp, rgb, check_contrast=False)
    os.replace(tmp, DOCS / "screenshot.png")
    assert (DOCS / "screenshot.png").stat().st_size > 10_000
