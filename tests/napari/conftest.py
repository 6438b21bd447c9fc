"""Fixtures for the napari widget tests (run under Xvfb via pytest-xvfb; marked ``gui``).

A tiny U-Net (base 8, depth 2) is trained once per session for a few seconds on synthetic EM so predictions are
a real mix of membrane and cytoplasm (the bundled default may be an untrained placeholder).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

import napari_neuroedge._napari  # noqa: E402,F401  (hides triton before torch is imported in this process)
from napari_neuroedge._napari import _qt_utils  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("filterwarnings", "ignore:System theme detection:UserWarning")


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.gui)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A quickly trained U-Net(base 8, depth 2) checkpoint that finds synthetic membranes (~95% pixel accuracy)."""
    from napari_neuroedge.config import AugmentConfig, NormConfig, TrainConfig
    from napari_neuroedge.progress import drive
    from napari_neuroedge.io.sample import synthetic_em
    from napari_neuroedge.training.dataset import slices_from_arrays
    from napari_neuroedge.training.loop import iter_fit

    root = tmp_path_factory.mktemp("tiny_model")
    stack = synthetic_em((2, 96, 96), cell_size=24, seed=3)
    train = slices_from_arrays(stack.image, stack.membrane, NormConfig())
    cfg = TrainConfig(model="unet", model_kwargs={"base": 8, "depth": 2}, steps=50, batch=4, val_every=10_000,
                      lr_backbone=0.01, lr_head=0.01, augment=AugmentConfig(crop=64, elastic_p=0.0), threads=1,
                      device="cpu", seed=0, precision="fp32")
    result = drive(iter_fit(cfg, train, [], root / "run", provenance={"name": "tiny-unet"}))
    path = root / "tiny-unet.pt"
    shutil.copy(result.last, path)
    return path


@pytest.fixture
def synth_stack():
    """(3, 96, 112) uint8 synthetic EM with membranes; different seed from the training data."""
    from napari_neuroedge.io.sample import synthetic_em

    return synthetic_em((3, 96, 112), cell_size=24, seed=1)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Models and the forms' saved values go to tmp; notifications are recorded; unexpected error notifications
    fail the test."""
    monkeypatch.setenv("NEUROEDGE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("NEUROEDGE_SETTINGS_DIR", str(tmp_path / "settings"))
    # the same numbers on every CPU: "auto" would pick bf16 (5e-3 off fp32) where the CPU has native bf16
    monkeypatch.setattr("napari_neuroedge.inference.precision.cpu_has_native_bf16", lambda: False)
    _qt_utils.HISTORY.clear()
    yield
    errors = [msg for level, msg in _qt_utils.HISTORY if level == "error"]
    _qt_utils.HISTORY.clear()
    assert not errors, f"unexpected error notifications: {errors}"


def take_notes(level: str | None = None) -> list[str]:
    """Messages notified so far (optionally of one level); removes them so teardown does not see them."""
    notes = [m for lv, m in _qt_utils.HISTORY if level is None or lv == level]
    kept = [(lv, m) for lv, m in _qt_utils.HISTORY if not (level is None or lv == level)]
    _qt_utils.HISTORY.clear()
    _qt_utils.HISTORY.extend(kept)
    return notes


@pytest.fixture
def notes():
    return take_notes


@pytest.fixture
def panel_viewer(make_napari_viewer, synth_stack, tiny_checkpoint):
    """A viewer with the synthetic stack (scaled, translated), the NeuroEdge panel docked, tiny model selected."""
    from napari_neuroedge._napari.widgets import NeuroEdgePanel

    viewer = make_napari_viewer()
    viewer.add_image(synth_stack.image, name="em", scale=(2.0, 1.5, 1.5), translate=(0.0, 10.0, 5.0))
    panel = NeuroEdgePanel(viewer)
    viewer.window.add_dock_widget(panel, name="NeuroEdge", area="right")
    panel.predict.load_checkpoint(str(tiny_checkpoint))
    panel.predict.tile_spin.setValue(64)
    return viewer, panel


def wait_job(qtbot, job, timeout: float = 60.0) -> None:
    """Run the Qt event loop until ``job`` has finished and its handlers ran."""
    assert job is not None
    qtbot.waitUntil(lambda: not job.running and job.worker is None, timeout=int(timeout * 1000))


@pytest.fixture
def goto():
    """goto(viewer, layer, z): show slice z of layer (and check the plugin reads it back)."""
    from napari_neuroedge._napari import tracking

    def go(viewer, layer, z: int) -> None:
        tracking.go_to_slice(viewer, layer, z)
        assert tracking.current_slice(viewer, layer) == z
    return go


@pytest.fixture
def waiter(qtbot):
    def wait(job, timeout: float = 60.0):
        wait_job(qtbot, job, timeout)
        return job
    return wait


@pytest.fixture
def start_cancellable_prediction(qtbot):
    """Start a Predict widget's job with many cancel points (32 px tiles, 8-way TTA, every slice) and return it
    once it is predicting."""

    def start(p):
        p.tile_spin.setValue(32)
        p.tta_combo.setCurrentText("8 (full dihedral)")
        p.scope_combo.setCurrentText("all slices")
        job = p.predict()
        qtbot.waitUntil(lambda: job.last_event is not None and job.last_event.stage == "predict", timeout=30_000)
        return job

    return start
