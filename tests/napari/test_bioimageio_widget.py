"""Predict widget: "Export model (bioimage.io)" writes a package; "load checkpoint" takes it back and predicts alike."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("bioimageio.core")


def test_export_button_writes_a_package_that_loads_and_predicts_the_same(qtbot, make_napari_viewer, waiter,
                                                                          tiny_checkpoint, tmp_path, notes):
    from bioimageio.spec import InvalidDescr, load_model_description

    from napari_neuroedge._napari.package_export import BUTTON_TEXT
    from napari_neuroedge._napari.widgets.predict import PredictWidget
    from napari_neuroedge.io.sample import synthetic_em

    viewer = make_napari_viewer()
    viewer.add_image(synthetic_em((96, 96), cell_size=20, seed=5).image, name="plane")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.load_checkpoint(str(tiny_checkpoint))
    w.tile_spin.setValue(64)
    waiter(w.predict())
    before = np.array(viewer.layers["plane boundary"].data)
    out = tmp_path / "tiny.zip"
    w.ask_package_path = lambda name: str(out)
    assert w.export_package_button.text() == BUTTON_TEXT
    w.export_package_button.click()
    assert not w.export_package_button.isEnabled()  # runs in a background thread
    qtbot.waitUntil(lambda: w.export_package_button.isEnabled(), timeout=120_000)
    assert out.exists() and any("bioimage.io package" in m for m in notes("info"))
    assert not isinstance(load_model_description(str(out)), InvalidDescr)
    name = w.load_checkpoint(str(out))
    assert name is not None and w.model_combo.currentText() == name
    waiter(w.predict())
    after = np.array(viewer.layers["plane boundary"].data)
    assert before.std() > 0.05 and np.abs(after - before).max() < 1e-5
    w.export_package_button.click()  # the same name again: refused, nothing overwritten
    assert any("already exists" in m for m in notes("error"))
