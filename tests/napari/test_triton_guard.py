"""The triton / OpenGL crash: importing triton after napari's OpenGL context exists segfaults under Mesa.

torch imports triton lazily (torch._dynamo: torchvision, the first Adam step). The plugin hides triton
(``sys.modules["triton"] = None``) when it is imported, so a user who opens the viewer first and runs a model
afterwards is safe. Each case runs in a fresh subprocess on its own 24-bit Xvfb display (xvfb-run); the crash
does not show on pytest-xvfb's default 16-bit display.
"""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)  # the OpenGL context exists from here on
    viewer.add_image(np.zeros((8, 8), np.uint8), name="warmup")
    for _ in range(20):
        QApplication.processEvents()
    assert "torch" not in sys.modules
    print("viewer up", flush=True)

    # what happens when the user opens the plugin and runs a model in the open viewer
    from napari_neuroedge._napari.widgets import NeuroEdgePanel
    from napari_neuroedge._napari import tracking
    from napari_neuroedge.io.sample import synthetic_em

    stack = synthetic_em((2, 64, 64), cell_size=20, seed=0)
    viewer.add_image(stack.image, name="em")
    panel = NeuroEdgePanel(viewer)
    viewer.window.add_dock_widget(panel)
    panel.predict.load_checkpoint(sys.argv[1])
    panel.predict.tile_spin.setValue(64)
    job = panel.predict.predict(image_name="em")  # synchronous (NEUROEDGE_SYNC_JOBS=1)
    assert job.state == "done", job.error
    print("predicted", flush=True)
    mem = viewer.layers["em membranes"]
    tracking.ledger_of(mem).mark_corrected(0)
    panel.finetune.steps_spin.setValue(2)
    panel.finetune.crop_spin.setValue(64)
    panel.finetune.batch_spin.setValue(1)
    panel.finetune.save_edit.setText(sys.argv[2])
    job = panel.finetune.finetune()  # Adam steps: imports torch._dynamo
    assert job.state == "done", job.error
    import torchvision  # noqa: F401
    print("triton hidden:", sys.modules.get("triton", "absent") is None, flush=True)
    print("triton imported:", sys.modules.get("triton") is not None, flush=True)
    print("fine-tuned OK", flush=True)
    viewer.close()
    """
)


def _triton_installed() -> bool:
    """Whether triton is on the path (find_spec would say no here: this process hides it)."""
    return importlib.machinery.PathFinder.find_spec("triton") is not None


def _run(tmp_path, checkpoint, allow_triton: bool) -> subprocess.CompletedProcess:
    script = tmp_path / "run_in_viewer.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, NEUROEDGE_SYNC_JOBS="1", NEUROEDGE_MODELS_DIR=str(tmp_path / "models"))
    env.pop("QT_QPA_PLATFORM", None)  # the real (Xvfb) X server: napari's canvas needs OpenGL
    if allow_triton:
        env["NEUROEDGE_ALLOW_TRITON"] = "1"
    else:
        env.pop("NEUROEDGE_ALLOW_TRITON", None)
    cmd = [sys.executable, str(script), str(checkpoint), str(tmp_path / "models")]
    if shutil.which("xvfb-run"):
        # its own 24-bit display, like a desktop: pytest-xvfb's default 16-bit one hides the crash
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24"] + cmd
    elif not os.environ.get("DISPLAY"):
        pytest.skip("needs an X display (xvfb-run or pytest-xvfb)")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def test_model_runs_in_open_viewer_with_guard(tmp_path, tiny_checkpoint):
    proc = _run(tmp_path, tiny_checkpoint, allow_triton=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "fine-tuned OK" in proc.stdout
    if _triton_installed():
        assert "triton hidden: True" in proc.stdout


def test_without_guard_triton_is_imported_after_the_gl_context(tmp_path, tiny_checkpoint):
    """Why the guard exists, asserted either way: with triton allowed, the same run imports triton after the
    OpenGL context exists (what the guard prevents), and under Mesa the process dies of it with SIGSEGV."""
    if not _triton_installed():
        pytest.skip("triton is not installed: nothing to import or crash")
    proc = _run(tmp_path, tiny_checkpoint, allow_triton=True)
    out = proc.stdout + proc.stderr
    assert "viewer up" in proc.stdout, out[-3000:]
    # SIGSEGV: raw, through xvfb-run's shell (139), or said by the shell when xvfb-run then fails to clean up (5);
    # the panel's background warm-up (training/warmup.py) may be the thread that imports triton and dies
    if proc.returncode in (-11, 139) or "Segmentation fault" in proc.stderr:
        assert proc.returncode != 0 and "fine-tuned OK" not in proc.stdout
    else:  # a GL driver without the conflict: the run ends, but triton was imported, i.e. the guard was off
        assert proc.returncode == 0, out[-3000:]
        assert "triton imported: True" in proc.stdout and "triton hidden: False" in proc.stdout, out[-3000:]


GUARD_PROBE = textwrap.dedent(
    """
    import sys
    import napari_neuroedge._napari  # installs the guard
    from napari_neuroedge._napari import _triton_guard
    try:
        import triton  # noqa: F401
        imported = True
    except ImportError:
        imported = False
    print("hidden", _triton_guard.is_hidden(), "imported", imported, "installed", _triton_guard.INSTALLED)
    """
)


@pytest.mark.parametrize("allow", [False, True])
def test_guard_hides_triton_unless_allowed(allow):
    """The mechanism, in a fresh interpreter: importing the plugin marks triton absent (an import fails) unless
    NEUROEDGE_ALLOW_TRITON=1; with it, triton imports when it is installed."""
    env = dict(os.environ)
    env.pop("NEUROEDGE_ALLOW_TRITON", None)
    if allow:
        env["NEUROEDGE_ALLOW_TRITON"] = "1"
    proc = subprocess.run([sys.executable, "-c", GUARD_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if allow:
        assert proc.stdout.split() == ["hidden", "False", "imported", str(_triton_installed()), "installed", "False"]
    else:
        assert proc.stdout.split() == ["hidden", "True", "imported", "False", "installed", "True"]
