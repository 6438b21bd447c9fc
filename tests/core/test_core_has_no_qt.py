"""The core never imports a GUI toolkit: importing it (and running a prediction) loads no Qt or napari module."""

from __future__ import annotations

import subprocess
import sys

GUI = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy")


def _run_without_gui(code: str) -> None:
    """Run ``code`` in a fresh interpreter and fail if it loaded a GUI toolkit module."""
    check = (f"import sys\n{code}bad = [m for m in sys.modules if m.split('.')[0] in {GUI!r}]\n"
             "print(bad); sys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_core_imports_no_qt():
    _run_without_gui(
        "import numpy as np\n"
        "import napari_neuroedge, napari_neuroedge.cli, napari_neuroedge.io.stacks, napari_neuroedge.io.export\n"
        "import napari_neuroedge.training.loop, napari_neuroedge.metrics, napari_neuroedge.models.casenet\n"
        "import napari_neuroedge.inference.pipeline, napari_neuroedge.inference.files, napari_neuroedge.io.workstore\n"
        "import napari_neuroedge.inference.blockwise, napari_neuroedge.io.overlay\n"
        "import napari_neuroedge.training.calibration, napari_neuroedge.inference.staged\n"
        "import napari_neuroedge.io.trainingset, napari_neuroedge.training.large_image\n"
        "from napari_neuroedge.inference.predict import predict_array\n"
        "predict_array(np.zeros((16, 16), np.float32), lambda b: b)\n"
    )


def test_the_plugin_state_and_actions_import_no_qt():
    """The correction ledger, the session state, the actions and the rules they use load without a GUI toolkit
    (their tests run headless)."""
    _run_without_gui(
        "import napari_neuroedge._napari.ledger, napari_neuroedge._napari.state, napari_neuroedge._napari.actions\n"
        "import napari_neuroedge._napari.tracking, napari_neuroedge._napari.training_data\n"
    )
