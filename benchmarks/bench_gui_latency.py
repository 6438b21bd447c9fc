"""Benchmark (not collected by pytest): GUI event-loop lateness while the NeuroEdge panel fine-tunes.

Realistic settings: the bundled model's architecture, a 512 x 512 synthetic slice with its true membranes as
the "corrections", crop 256, batch 4. A QTimer fires every 10 ms on the GUI thread; its lateness is reported.

    xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python benchmarks/bench_gui_latency.py [steps] [threads]

``threads`` overrides the plugin's choice (all cores but one) to compare.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

os.environ.setdefault("NEUROEDGE_MODELS_DIR", tempfile.mkdtemp(prefix="neuroedge-bench-"))

import napari_neuroedge._napari  # noqa: E402,F401  (triton guard first)


def main() -> None:
    import napari
    import numpy as np
    from qtpy.QtCore import Qt, QTimer
    from qtpy.QtWidgets import QApplication

    from napari_neuroedge._napari import tracking
    from napari_neuroedge._napari.widgets import NeuroEdgePanel
    from napari_neuroedge.sample import synthetic_em

    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    if len(sys.argv) > 2:
        import napari_neuroedge._napari.widgets.finetune as ft_module

        ft_module.gui_threads = lambda: int(sys.argv[2])
    viewer = napari.Viewer(show=True)
    stack = synthetic_em((2, 512, 512), cell_size=40, seed=1)
    viewer.add_image(stack.image, name="em")
    panel = NeuroEdgePanel(viewer)
    viewer.window.add_dock_widget(panel)
    mem = viewer.add_labels(stack.membrane.copy(), name="em membranes")
    tracking.info(mem).update(role="membranes", image="em")
    tracking.info(mem)["corrected"].add(0)
    panel.finetune.membranes_combo.refresh()
    panel.finetune.steps_spin.setValue(steps)
    app = QApplication.instance()

    def pump(cond, timeout=3600.0):
        t0 = time.time()
        while not cond() and time.time() - t0 < timeout:
            app.processEvents()
            time.sleep(0.002)

    late: list[float] = []
    last = [None]

    def tick():
        now = time.perf_counter()
        if last[0] is not None:
            late.append(max(0.0, (now - last[0] - 0.010) * 1000))
        last[0] = now

    timer = QTimer()
    timer.setTimerType(Qt.PreciseTimer)
    timer.setInterval(10)
    timer.timeout.connect(tick)
    job = panel.finetune.finetune()
    pump(lambda: job.last_event is not None and job.last_event.stage == "train")
    t0 = time.time()
    timer.start()
    pump(lambda: not job.running)
    timer.stop()
    wall = time.time() - t0
    a = np.asarray(late)
    print(f"steps={steps} state={job.state} train_wall={wall:.1f}s ({wall / max(steps, 1):.2f} s/step) "
          f"ticks={len(a)} lateness p50={np.percentile(a, 50):.1f} ms p95={np.percentile(a, 95):.1f} ms "
          f"p99={np.percentile(a, 99):.1f} ms max={a.max():.1f} ms")
    viewer.close()


if __name__ == "__main__":
    main()
