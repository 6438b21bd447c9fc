"""GUI event-loop lateness (issue 22 item 5): how long the napari window stops responding during each job.

A 10 ms QTimer ticks on the GUI thread all along; a tick's lateness (how much later than 10 ms after the last one
it fires) is the time the event loop was blocked: a user's click or repaint waits that long. For each scenario the
script reports the maximum and the 99th percentile of the lateness, and the moment of the worst stall (while the
job runs, or as its results land in the layers). Target: max < 250 ms at every moment of every job.

Scenarios (run in one real napari viewer, under Xvfb: ``xvfb-run -a -s "-screen 0 1280x1024x24" python
benchmarks/bench_gui_latency.py``), with the bundled ``default`` model, TTA off:

- ``predict-all``: Predict on all slices of a (``--depth``, 512, 512) synthetic stack, with neuron instances;
- ``predict-large``: Predict on the current slice of a ``--large`` x ``--large`` zarr image (the on-disk,
  zarr-backed output path);
- ``stroke``: a 200-dab brush stroke on that zarr-backed membrane layer, one dab per event-loop turn as mouse
  moves come (per-dab time and the stroke's total);
- (always, first) the fine-tune path's imports that the Fine-tune panel starts in a background thread as it opens;
- ``finetune``: the one-click fine-tune of the default model on one corrected 512 x 512 slice, ``--steps`` steps.

Each scenario is also run with the probe alone (an idle event loop) first, the peer the lateness is read against.
Usage: ``python benchmarks/bench_gui_latency.py [--quick] [--scenarios predict-all,predict-large,stroke,finetune]
[--large 4096] [--depth 8] [--steps 20] [--threads 1] [--profile SCENARIO] [--stalls N]``; ``--stalls N`` prints
where the GUI thread was (a call tree of stack samples) during each scenario's N worst stalls.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_API", "pyqt6")
os.environ.setdefault("NEUROEDGE_SETTINGS_DIR", tempfile.mkdtemp(prefix="neuroedge-bench-settings-"))
os.environ.setdefault("NEUROEDGE_MODELS_DIR", tempfile.mkdtemp(prefix="neuroedge-bench-models-"))
os.environ.setdefault("NEUROEDGE_CACHE_DIR", tempfile.mkdtemp(prefix="neuroedge-bench-cache-"))

import napari_neuroedge._napari  # noqa: E402,F401  (the triton guard before any OpenGL context)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, ratio_line, target_note  # noqa: E402

TARGET_MS = 250.0


class Probe:
    """A 10 ms PreciseTimer on the GUI thread recording (time, lateness ms) of every tick."""

    def __init__(self, interval_ms: int = 10) -> None:
        from qtpy.QtCore import Qt, QTimer

        self.interval = interval_ms / 1000
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.ticks: list[tuple[float, float]] = []
        self.last: float | None = None
        self.stalls = 0  # > 0: sample the GUI thread's stack and print its N worst stalls at stop()
        self.sampler: StallSampler | None = None

    def _gc(self, phase: str, info: dict[str, Any]) -> None:  # any thread: a full collection holds the GIL
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_start = time.perf_counter()
        elif self._gc_start is not None:
            self.gc_pauses.append((time.perf_counter() - self._gc_start) * 1000)
            self._gc_start = None

    def _tick(self) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.ticks.append((now, max(0.0, (now - self.last - self.interval) * 1000)))
        self.last = now

    def start(self, sample: bool = True) -> None:
        self.ticks, self.last = [], None
        self.gc_pauses: list[float] = []  # ms of each full (generation 2) garbage collection, in any thread
        self._gc_start: float | None = None
        gc.callbacks.append(self._gc)
        self.sampler = StallSampler() if sample and self.stalls > 0 else None
        self.timer.start()

    def stop(self) -> list[tuple[float, float]]:
        self.timer.stop()
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)
        if self.sampler is not None:
            self.sampler.report(self.ticks, self.stalls)
            self.sampler = None
        return self.ticks


def run_loop_until(cond, timeout: float = 3600.0) -> None:
    """Run Qt's own event loop (as napari does) until ``cond()``; a 5 ms timer checks it."""
    from qtpy.QtCore import QEventLoop, QTimer

    if cond():
        return
    loop = QEventLoop()
    check = QTimer()
    check.setInterval(5)
    deadline = time.perf_counter() + timeout
    check.timeout.connect(lambda: loop.quit() if cond() or time.perf_counter() > deadline else None)
    check.start()
    loop.exec()
    check.stop()


def summary(probe: Probe, landed: float | None = None) -> dict[str, float]:
    """Stop ``probe``; its lateness (max, p50, p99; before / after ``landed``) and its full garbage collections."""
    import numpy as np

    ticks = probe.stop()

    late = np.asarray([t[1] for t in ticks]) if ticks else np.zeros(1)
    worst = int(np.argmax(late))
    out = {"n": len(ticks), "p50": float(np.percentile(late, 50)), "p99": float(np.percentile(late, 99)),
           "max": float(late.max()), "gc_n": len(probe.gc_pauses), "gc_max": max(probe.gc_pauses, default=0.0)}
    if landed is not None and ticks:
        run = [lat for t, lat in ticks if t < landed]
        land = [lat for t, lat in ticks if t >= landed]
        out["max_running"] = max(run, default=0.0)
        out["max_landing"] = max(land, default=0.0)
        out["worst_at"] = "landing" if ticks[worst][0] >= landed else "running"
    return out


def idle(probe: Probe, seconds: float = 1.0) -> dict[str, float]:
    probe.start(sample=False)
    t_end = time.perf_counter() + seconds
    run_loop_until(lambda: time.perf_counter() > t_end)
    return summary(probe)


def job_lateness(probe: Probe, start, widget, profile: bool = False) -> dict[str, float]:
    """Lateness while ``start()``'s job runs and while its results land (from its last event to its end)."""
    marks: dict[str, float] = {}
    done = widget._on_done

    def mark_done(j, result):  # the results begin to land in the layers here (GUI thread)
        marks["landed"] = time.perf_counter()
        return done(j, result)

    widget._on_done = mark_done  # before the start: the job keeps the handler it was given
    prof = _profiler(profile)
    probe.start()
    job = start()
    if job is None:
        widget._on_done = done
        raise RuntimeError("the job did not start")
    run_loop_until(lambda: not job.running and job.worker is None)
    t_end = time.perf_counter() + 0.3  # and what the landing left queued
    run_loop_until(lambda: time.perf_counter() > t_end)
    _report(prof)
    del widget._on_done
    if job.state != "done":
        raise RuntimeError(f"{job.name} ended {job.state}: {job.error}")
    out = summary(probe, marks.get("landed"))
    out["wall"] = time.perf_counter() - job.started_at
    return out


class StallSampler:
    """Samples the GUI thread's Python stack every ``period`` s from a side thread; :meth:`report` prints, for the
    worst stalls the probe saw, the functions most often on the stack during each (``--stalls N``)."""

    def __init__(self, period: float = 0.003) -> None:
        import threading

        self.period = period
        self.main = threading.main_thread().ident
        self.samples: list[tuple[float, tuple[str, ...]]] = []
        self.others: list[tuple[float, dict[int, tuple[str, ...]]]] = []  # the other threads' innermost frames
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import threading
        import traceback

        def fmt(frame: Any, n: int) -> tuple[str, ...]:
            return tuple(f"{Path(f.filename).name}:{f.lineno}({f.name})" for f in traceback.extract_stack(frame)[-n:])

        while not self._stop.wait(self.period):
            frames = sys._current_frames()
            now = time.perf_counter()
            if self.main in frames:
                self.samples.append((now, fmt(frames[self.main], 200)))
                self.others.append((now, {ident: fmt(f, 30) for ident, f in frames.items()
                                          if ident not in (self.main, threading.get_ident())}))

    @staticmethod
    def _tree(stacks: list[tuple[str, ...]], depth: int, total: int, indent: str, share: float = 0.08) -> None:
        """Print the call tree of ``stacks`` below ``depth``: each callee holding at least ``share`` of the samples
        (share, then the frame; a chain with one such callee per level stays at one indent)."""
        from collections import Counter

        while True:
            below = Counter(s[depth] for s in stacks if len(s) > depth)
            kept = [(fr, n) for fr, n in below.most_common() if n >= share * total]
            if len(kept) != 1:
                break
            frame, n = kept[0]
            if "bench_gui_latency" not in frame:
                print(f"{indent}{n / total:4.0%} {frame}")
            stacks = [s for s in stacks if len(s) > depth and s[depth] == frame]
            depth += 1
        for frame, n in kept:
            print(f"{indent}{n / total:4.0%} {frame}")
            StallSampler._tree([s for s in stacks if len(s) > depth and s[depth] == frame], depth + 1, total,
                              indent + "  ", share)

    def report(self, ticks: list[tuple[float, float]], worst: int = 3) -> None:
        """For each of the ``worst`` stalls, where the GUI thread was: the call tree of its stack samples, each
        callee holding at least 8% of them."""
        self._stop.set()
        for t, late in sorted(ticks, key=lambda tk: -tk[1])[:worst]:
            inside = [s for when, s in self.samples if t - late / 1000 - 0.01 <= when <= t]
            print(f"  stall of {late:.0f} ms ({len(inside)} samples), where the GUI thread was:", flush=True)
            self._tree(inside, 0, len(inside), "    ")
            # no sample for a while: some thread held the GIL; the other threads' stacks on either side of the gap
            times = [when for when, _ in self.others]
            around = [i for i, when in enumerate(times) if t - late / 1000 - 0.05 <= when <= t + 0.05]
            if len(around) > 1:
                gap, i = max((times[k + 1] - times[k], k) for k in around[:-1])
                if gap > 0.05:
                    print(f"    longest gap between samples {gap * 1000:.0f} ms; other threads before / after it:")
                    for ident, stack in self.others[i][1].items():
                        after = self.others[i + 1][1].get(ident, ())
                        print(f"      thread {ident}: {_chain(stack)}"
                              + ("  (same after)" if after == stack else f"\n        after: {_chain(after)}"))


def _chain(stack: tuple[str, ...], n: int = 6) -> str:
    """A thread's innermost ``n`` frames outside importlib, innermost first."""
    return " < ".join([fr for fr in reversed(stack) if "<frozen" not in fr][:n])


def _profiler(on: bool):
    if not on:
        return None
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    return prof


def _report(prof) -> None:
    if prof is None:
        return
    import pstats

    prof.disable()
    pstats.Stats(prof).sort_stats("cumulative").print_stats(30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, numbers mean nothing")
    p.add_argument("--scenarios", default="predict-all,predict-large,stroke,finetune")
    p.add_argument("--large", type=int, default=4096, help="side of the large zarr image (issue: 8192)")
    p.add_argument("--depth", type=int, default=8, help="slices of the predict-all stack")
    p.add_argument("--steps", type=int, default=20, help="fine-tune steps")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the jobs (the GUI keeps a core)")
    p.add_argument("--profile", default="", help="a scenario to run under cProfile (prints the top functions)")
    p.add_argument("--stalls", type=int, default=0,
                   help="print the GUI thread's stack samples during each scenario's N worst stalls")
    args = p.parse_args(argv)
    if args.quick:
        args.large, args.depth, args.steps = 1024, 2, 3
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]

    import napari
    import numpy as np
    import zarr

    import napari_neuroedge._napari.widgets.finetune as ft_module
    import napari_neuroedge._napari.widgets.predict as predict_module
    from napari_neuroedge._napari import tracking
    from napari_neuroedge._napari.widgets import NeuroEdgePanel
    from napari_neuroedge.io.sample import synthetic_em

    predict_module.gui_threads = ft_module.gui_threads = lambda: args.threads
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    panel = NeuroEdgePanel(viewer)
    viewer.window.add_dock_widget(panel, name="NeuroEdge", area="right")
    pw = panel.predict
    pw.device_combo.setCurrentText("cpu")
    probe = Probe()
    probe.stalls = args.stalls
    print(f"bench_gui_latency: napari {napari.__version__}, {os.cpu_count()} cores, job threads {args.threads}, "
          f"load {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    rows, results = [], {}
    # the Fine-tune panel imports the fine-tune path in a background thread as it opens (torch._dynamo, sympy...)
    warm = panel.finetune.warm_up
    probe.start()
    t0 = time.perf_counter()
    run_loop_until(lambda: not warm.is_alive())
    r = summary(probe)
    r.update(wall=time.perf_counter() - t0, worst_at="in the background")
    results["warm-up"] = r
    rows.append(["After the panel opens: importing the fine-tune path in the background", r])
    base = idle(probe)
    print(f"  idle event loop: max {base['max']:.1f} ms, p99 {base['p99']:.1f} ms ({base['n']} ticks)", flush=True)

    if "predict-all" in scenarios:
        stack = synthetic_em((args.depth, 512, 512), cell_size=40, seed=1)
        viewer.add_image(stack.image, name="stack")
        pw.instances_check.setChecked(True)
        r = job_lateness(probe, lambda: pw.predict(scope="all slices", image_name="stack"), pw,
                         args.profile == "predict-all")
        pw.instances_check.setChecked(False)
        results["predict-all"] = r
        rows.append([f"Predict all {args.depth} slices of 512^2, with instances", r])

    mem = None
    if "predict-large" in scenarios or "stroke" in scenarios:
        root = Path(tempfile.mkdtemp(prefix="neuroedge-bench-zarr-"))
        side = args.large
        image = zarr.open(str(root / "large.zarr"), mode="w", shape=(2, side, side), chunks=(1, 1024, 1024),
                          dtype=np.uint8)
        tile = synthetic_em((1024, 1024), cell_size=40, seed=2).image
        for z in range(2):
            for y in range(0, side, 1024):
                for x in range(0, side, 1024):
                    image[z, y:y + 1024, x:x + 1024] = tile
        viewer.add_image(image, name="large")
        tracking.go_to_slice(viewer, viewer.layers["large"], 0)
        r = job_lateness(probe, lambda: pw.predict(scope="current slice", image_name="large"), pw,
                         args.profile == "predict-large")
        results["predict-large"] = r
        rows.append([f"Predict the current slice of a {side}^2 zarr image", r])
        mem = viewer.layers["large membranes"]

    if "stroke" in scenarios and mem is not None:
        from qtpy.QtCore import QTimer

        viewer.layers.selection.active = mem
        mem.brush_size = 10
        mem.mode = "paint"
        side = mem.data.shape[-1]
        ys = np.linspace(side * 0.3, side * 0.7, 200).astype(int)
        xs = (side * 0.5 + side * 0.1 * np.sin(np.linspace(0, 6, 200))).astype(int)
        dabs: list[float] = []
        state = {"i": 0}

        def dab() -> None:  # one mouse move's dab per event-loop turn
            i = state["i"]
            if i >= len(ys):
                return
            t0 = time.perf_counter()
            mem.paint((0, int(ys[i]), int(xs[i])), 1)
            dabs.append((time.perf_counter() - t0) * 1000)
            state["i"] = i + 1
            QTimer.singleShot(0, dab)

        probe.start()
        prof = _profiler(args.profile == "stroke")
        t0 = time.perf_counter()
        QTimer.singleShot(0, dab)
        run_loop_until(lambda: state["i"] >= len(ys))
        total = time.perf_counter() - t0
        _report(prof)
        t_end = time.perf_counter() + 0.5  # the debounced summaries after the stroke
        run_loop_until(lambda: time.perf_counter() > t_end)
        r = summary(probe)
        r.update(wall=total, worst_at="stroke", dab_p50=float(np.median(dabs)), dab_max=float(max(dabs)))
        results["stroke"] = r
        rows.append([f"200-dab stroke on the {side}^2 zarr-backed membranes (per dab: median "
                     f"{r['dab_p50']:.1f} ms, max {r['dab_max']:.1f} ms)", r])

    if "finetune" in scenarios:
        stack = synthetic_em((2, 512, 512), cell_size=40, seed=3)
        viewer.add_image(stack.image, name="ft")
        ftm = viewer.add_labels(stack.membrane.copy(), name="ft membranes")
        tracking.info(ftm).update(role="membranes", image="ft")
        tracking.ledger_of(ftm).mark_corrected(0)
        ft = panel.finetune
        ft.membranes_combo.refresh()
        ft.membranes_combo.set_layer("ft membranes")
        ft.steps_spin.setValue(args.steps)
        r = job_lateness(probe, lambda: ft.finetune(confirmed=True), ft, args.profile == "finetune")
        results["finetune"] = r
        rows.append([f"Fine-tune, {args.steps} steps on one 512^2 slice", r])

    table = []
    for what, r in rows:
        where = r["worst_at"]
        print(f"  {what}: wall {r['wall']:.1f} s; lateness max {r['max']:.0f} ms ({where}), p99 {r['p99']:.0f} ms, "
              f"p50 {r['p50']:.0f} ms" + (f"; max while running {r['max_running']:.0f} ms, as results land "
                                          f"{r['max_landing']:.0f} ms" if "max_landing" in r else "")
              + f"; full garbage collections {r['gc_n']} (longest {r['gc_max']:.0f} ms)", flush=True)
        table.append([what, f"{r['wall']:.1f} s", f"{r['max']:.0f} ms ({where})", f"{r['p99']:.0f} ms",
                      "met" if r["max"] < TARGET_MS else "NOT met"])
    for key, r in results.items():
        ratio_line(f"max_lateness_over_target_{key.replace('-', '_')}", max(r["max"], 1e-3) / TARGET_MS,
                   target_note(r["max"] / TARGET_MS, "<", 1.0))
        ratio_line(f"max_lateness_over_idle_{key.replace('-', '_')}", max(r["max"], 1e-3) / max(base["max"], 1.0))
    print("\n## README table\n")
    print(markdown_table(["job", "wall", "max lateness (when)", "p99", f"< {TARGET_MS:.0f} ms"], table))
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
