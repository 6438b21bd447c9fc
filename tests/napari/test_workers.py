"""JobRunner: core generators in a napari thread worker (or synchronously), cancel between yields, conflicts."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from napari_neuroedge._napari.workers import CANCELLED, JobRunner
from napari_neuroedge.progress import ProgressEvent


def counting_job(n: int, log: dict, delay: float = 0.0):
    def make(job):
        def gen():
            log["thread"] = threading.get_ident()
            try:
                for i in range(n):
                    if delay:
                        time.sleep(delay)
                    yield ProgressEvent(i + 1, n, "count")
                return "finished"
            finally:
                log["closed_in"] = threading.get_ident()
        return gen()
    return make


def _record(calls):
    return dict(on_event=lambda j, ev: calls.append(("event", ev.done)),
                on_done=lambda j, r: calls.append(("done", r)),
                on_cancelled=lambda j: calls.append(("cancelled",)),
                on_error=lambda j, e: calls.append(("error", str(e))),
                on_finally=lambda j: calls.append(("finally",)))


@pytest.mark.parametrize("background", [True, False])
def test_job_runs_and_reports_in_order(qtbot, background):
    runner = JobRunner(background=background)
    calls, log = [], {}
    job = runner.start("count", {"r"}, counting_job(4, log), **_record(calls))
    qtbot.waitUntil(lambda: not job.running and job.worker is None, timeout=10_000)
    assert calls == [("event", 1), ("event", 2), ("event", 3), ("event", 4), ("done", "finished"), ("finally",)]
    assert job.state == "done" and job.result == "finished"
    main = threading.get_ident()
    assert (log["thread"] != main) is background  # background jobs run off the GUI thread
    assert log["closed_in"] == log["thread"]


def test_cancel_stops_between_yields_and_closes_in_worker(qtbot):
    runner = JobRunner(background=True)
    calls, log = [], {}
    job = runner.start("slow", {"r"}, counting_job(1000, log, delay=0.01), **_record(calls))
    qtbot.waitUntil(lambda: any(c[0] == "event" for c in calls), timeout=10_000)
    assert runner.cancel(job, wait=5.0)
    qtbot.waitUntil(lambda: not job.running and job.worker is None, timeout=10_000)
    assert job.state == "cancelled"
    assert ("cancelled",) in calls and not any(c[0] == "done" for c in calls)
    assert log["closed_in"] == log["thread"] != threading.get_ident()  # clean-up ran in the worker
    assert len([c for c in calls if c[0] == "event"]) < 1000


def test_conflicting_job_is_refused(qtbot, notes):
    runner = JobRunner(background=True)
    log = {}
    job = runner.start("first", {"layer:a"}, counting_job(1000, log, delay=0.01))
    assert runner.start("second", {"layer:a", "x"}, counting_job(1, {})) is None
    assert "still running" in notes("warning")[0]
    other = runner.start("third", {"layer:b"}, counting_job(1, {}))
    assert other is not None
    runner.shutdown(wait=5.0)
    assert job.finished.is_set() and job.detached
    qtbot.waitUntil(lambda: job.worker is None and other.worker is None, timeout=10_000)


def test_errors_become_notifications(qtbot, notes):
    def boom(job):
        def gen():
            yield ProgressEvent(0, 1, "x")
            raise RuntimeError("disk full")
        return gen()

    runner = JobRunner(background=True)
    job = runner.start("failing", set(), boom)
    qtbot.waitUntil(lambda: not job.running and job.worker is None, timeout=10_000)
    assert job.state == "failed" and "disk full" in str(job.error)
    errors = notes("error")
    assert errors == ["failing failed: disk full."]


def test_cancelled_sentinel_repr():
    assert repr(CANCELLED) == "CANCELLED"


def test_jobs_are_napari_tasks_and_a_window_cancel_is_cooperative(qtbot, make_napari_viewer):
    """Jobs run in workers from napari's public create_worker, so the window lists them as tasks (closing asks
    first); napari cancelling its tasks (worker.quit()) stops the job at its next yield with its clean-up run in
    the worker thread, like our Cancel button."""
    from napari.qt.threading import GeneratorWorker

    viewer = make_napari_viewer()
    runner = JobRunner(viewer, background=True)
    calls, log = [], {}
    job = runner.start("slow", {"r"}, counting_job(1000, log, delay=0.01), **_record(calls))
    assert isinstance(job.worker, GeneratorWorker)
    qtbot.waitUntil(lambda: any(c[0] == "event" for c in calls), timeout=10_000)
    tasks = viewer.window._task_status_manager  # napari's own bookkeeping (test-side check only)
    assert tasks.is_busy() and tasks.get_status()
    tasks.cancel_all()  # what closing the window does
    qtbot.waitUntil(lambda: not job.running and job.worker is None, timeout=10_000)
    assert job.state == "cancelled" and ("cancelled",) in calls
    assert log["closed_in"] == log["thread"] != threading.get_ident()
    assert len([c for c in calls if c[0] == "event"]) < 1000


@pytest.mark.parametrize("background", [True, False])
def test_a_generator_done_handler_lands_a_step_per_event_loop_turn(qtbot, background):
    """A done handler that is a generator is advanced one step per turn of the event loop (all at once when
    synchronous): the job is 'landing' and keeps its resource meanwhile; 'finally' runs after the last step."""
    from qtpy.QtCore import QTimer

    runner = JobRunner(background=background)
    calls, log, turns, states = [], {}, [], []

    def land(job, result):
        for i in range(3):
            calls.append(("land", i))
            states.append((job.state, job.running, runner.conflict({"r"}) is job, len(turns)))
            # a zero timer queued now runs before the next step only if the runner gave the loop a turn
            QTimer.singleShot(0, lambda i=i: turns.append(i))
            yield
        calls.append(("landed", result))

    handlers = _record(calls)
    handlers["on_done"] = land
    job = runner.start("count", {"r"}, counting_job(2, log), **handlers)
    qtbot.waitUntil(lambda: not job.running and job.worker is None, timeout=10_000)
    assert calls == [("event", 1), ("event", 2), ("land", 0), ("land", 1), ("land", 2), ("landed", "finished"),
                     ("finally",)]
    # each step saw the timers of the steps before it run (the loop turned in between); synchronously none did
    assert job.state == "done"
    assert states == [("landing", True, True, n) for n in ((0, 1, 2) if background else (0, 0, 0))]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_a_worker_thread_runs_nicer_than_the_gui_thread(qtbot):
    """On a busy machine the GUI thread must get the core first: the job's thread is WORKER_NICE nicer."""
    import os

    from napari_neuroedge._napari.workers import WORKER_NICE

    def make(job):
        def gen():
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            yield ProgressEvent(1, 1, "x")
            return "ok"
        return gen()

    seen: list[int] = []
    main = os.getpriority(os.PRIO_PROCESS, os.getpid())
    job = JobRunner(background=True).start("nice", {"r"}, make)
    qtbot.waitUntil(lambda: not job.running and job.worker is None, timeout=10_000)
    assert job.state == "done" and seen == [min(19, main + WORKER_NICE)]
    assert os.getpriority(os.PRIO_PROCESS, os.getpid()) == main  # the GUI thread keeps its priority


def test_a_warm_up_runs_once_in_a_nicer_thread_and_a_failure_is_only_logged(qtbot, caplog):
    import os

    from napari_neuroedge._napari.workers import WORKER_NICE, warm_up

    calls: list[int] = []

    def fn() -> float:
        calls.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return 0.0

    first = warm_up("test-once", fn)
    assert warm_up("test-once", fn) is first  # once per process
    first.join(10)
    assert warm_up("test-once", fn) is first and not first.is_alive() and not first.daemon
    main = os.getpriority(os.PRIO_PROCESS, os.getpid())
    assert calls == [min(19, main + WORKER_NICE)]
    import gc

    assert gc.get_freeze_count() == 0  # its hold on the collector (gc_hold) released

    def boom() -> float:
        raise RuntimeError("no such module")

    with caplog.at_level("WARNING", logger="napari_neuroedge"):
        warm_up("test-fails", boom).join(10)
    assert "warm-up test-fails failed" in caplog.text and "no such module" in caplog.text


def test_full_collections_skip_older_objects_only_while_jobs_run(qtbot):
    """gc_hold: the first running job freezes the objects tracked so far, the last one to end unfreezes them, a
    failed job too; a freeze made by someone else before is left as it was."""
    import gc

    from napari_neuroedge._napari import gc_hold

    assert gc.get_freeze_count() == 0 and gc_hold.holders() == 0
    seen: list[tuple[int, int]] = []

    def make(job):
        def gen():
            yield ProgressEvent(1, 1, "x")
            return "ok"
        return gen()

    def failing(job):
        def gen():
            yield ProgressEvent(1, 1, "x")
            raise RuntimeError("boom")
        return gen()

    runner = JobRunner(background=False)
    record = dict(on_event=lambda j, ev: seen.append((gc.get_freeze_count() > 0, gc_hold.holders())))
    runner.start("a", {"a"}, make, **record)
    assert seen == [(True, 1)] and gc.get_freeze_count() == 0 and gc_hold.holders() == 0
    job = runner.start("b", {"b"}, failing, on_error=lambda j, e: None, **record)
    assert job.state == "failed" and seen[-1] == (True, 1) and gc.get_freeze_count() == 0

    gc_hold.hold()  # a job already running (another resource): a nested job keeps the freeze when it ends
    runner.start("c", {"c"}, make, **record)
    assert seen[-1] == (True, 2) and gc.get_freeze_count() > 0
    gc_hold.release()
    assert gc.get_freeze_count() == 0

    gc.freeze()  # someone else's freeze: left alone
    try:
        runner.start("d", {"d"}, make, **record)
        assert gc.get_freeze_count() > 0 and gc_hold.holders() == 0
    finally:
        gc.unfreeze()

    bg = JobRunner(background=True).start("e", {"e"}, make, **record)
    qtbot.waitUntil(lambda: not bg.running and bg.worker is None, timeout=10_000)
    assert bg.state == "done" and seen[-1][0] and gc.get_freeze_count() == 0 and gc_hold.holders() == 0
