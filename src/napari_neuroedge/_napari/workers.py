"""Running the core's generator jobs (prediction, fine-tuning) off the GUI thread, one job per resource.

A job is a callable taking its :class:`Job` and returning a core generator (it yields
:class:`~napari_neuroedge.progress.ProgressEvent` and returns a result). :class:`JobRunner` drives it in a worker
made by napari's public ``napari.qt.threading.create_worker`` (which also lists it in the window's tasks, so closing
the window asks first and then cancels it) or, with ``background=False``, synchronously in the caller's thread
(tests, scripts). Cancel sets a flag checked between yields; the core generator is then closed *in the worker
thread*, so its clean-up (temp files, the fine-tuner's last checkpoint) runs before the job reports back.
Handlers always run in the GUI thread. An ``on_done`` handler that is a generator function *lands* its results in
steps: the runner advances it one step per turn of the Qt event loop (the job is ``landing`` meanwhile, still
holding its resources), so writing large results into layers never freezes the window at once. Jobs holding a
resource (e.g. ``"layer:stack"``) block other jobs asking for it, with a message; closing the viewer cancels every
job and waits briefly for it. A worker thread runs at a lower priority than the GUI thread
(:func:`lower_thread_priority`), so on a busy machine the window gets the core first. While any job runs, full
garbage collections skip the objects that existed before it (:mod:`.gc_hold`).
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import gc_hold
from ._qt_utils import alive, log, notify, reason, report

Handler = Callable[..., None] | None
#: ms between two landing steps: a 0 ms timer re-armed from its own callback is a posted event that runs before
#: the loop's due timers and repaints, so a chain of steps held them off as if it were one long step
STEP_GAP_MS = 1


class _Cancelled:
    """Sentinel returned by a job that stopped on a cancel request."""

    def __repr__(self) -> str:
        return "CANCELLED"


CANCELLED = _Cancelled()


@dataclass
class Failed:
    """Returned (not raised) by a failed job: superqt drops RuntimeErrors (e.g. CUDA out of memory) raised in a
    worker without emitting ``finished``, so errors travel as values instead."""

    error: BaseException
    traceback: str = ""
_ids = itertools.count(1)


@dataclass(eq=False)
class Job:
    """One running (or finished) job; ``state`` is pending | running | landing | done | cancelled | failed
    (landing: the worker finished and the done handler is writing its results, a step per event-loop turn)."""

    name: str
    resources: frozenset[str]
    id: int = field(default_factory=lambda: next(_ids))
    state: str = "pending"
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    detached: bool = False  # handlers no longer run (the viewer closed)
    started_at: float = field(default_factory=time.perf_counter)
    last_event: Any = None
    result: Any = None
    error: BaseException | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # job-specific data the worker shares with handlers
    worker: Any = None
    pbar: Any = None
    background: bool = True  # run by a worker thread (else in the caller's thread, results landed at once)
    finish_pending: bool = False  # the worker finished while the results were still landing
    gc_held: bool = False  # holds gc_hold while it runs (released when it has ended)

    @property
    def running(self) -> bool:
        return self.state in ("pending", "running", "landing")

    def cancel(self) -> None:
        """Ask the job to stop at its next yield."""
        self.cancel_requested.set()


#: how much nicer than the process's main (GUI) thread a worker thread runs (Linux; elsewhere nothing changes)
WORKER_NICE = 5


def lower_thread_priority(step: int = WORKER_NICE) -> bool:
    """Make the calling thread ``step`` nicer than the process's main thread (Linux schedules threads by their own
    nice value): when the cores are busy, the GUI thread runs first and the job waits. Returns whether it did (never
    on the main thread)."""
    if threading.current_thread() is threading.main_thread() or not sys.platform.startswith("linux"):
        return False
    try:
        main = os.getpriority(os.PRIO_PROCESS, os.getpid())  # (the main thread's id is the process id)
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, main + step))
        return True
    except OSError:  # not allowed
        return False


def drive_cancellable(job: Job, make: Callable[[Job], Generator[Any, None, Any]]) -> Generator[Any, None, Any]:
    """Generator run by the worker: forwards the core job's events; on cancel closes it (here) and returns
    CANCELLED. A worker thread lowers its own priority first (:func:`lower_thread_priority`)."""
    lower_thread_priority()
    try:
        try:
            gen = make(job)
        except Exception as exc:
            return Failed(exc, traceback.format_exc())
        try:
            while True:
                if job.cancel_requested.is_set():
                    gen.close()
                    return CANCELLED
                try:
                    event = next(gen)
                except StopIteration as stop:
                    return stop.value
                except Exception as exc:
                    return Failed(exc, traceback.format_exc())
                yield event
        finally:
            gen.close()
    finally:
        job.finished.set()


def _cancel_ref(ref: weakref.ReferenceType, *_: Any) -> None:
    job = ref()
    if job is not None and job.running:
        job.cancel()
        job.detached = True


class JobRunner:
    """Starts jobs, routes their events to GUI-thread handlers and keeps one job per resource."""

    def __init__(self, viewer: Any = None, background: bool = True) -> None:
        self._viewer_ref = weakref.ref(viewer) if viewer is not None else (lambda: None)
        self.background = background
        self.jobs: list[Job] = []

    # ------------------------------------------------------------------ queries
    def running(self) -> list[Job]:
        return [j for j in self.jobs if j.running]

    def conflict(self, resources: Iterable[str]) -> Job | None:
        """The running job holding any of ``resources``, if one does."""
        wanted = set(resources)
        for job in self.running():
            if job.resources & wanted:
                return job
        return None

    # ------------------------------------------------------------------ starting
    def start(self, name: str, resources: Iterable[str], make: Callable[[Job], Generator[Any, None, Any]], *,
              on_event: Handler = None, on_done: Handler = None, on_cancelled: Handler = None,
              on_error: Handler = None, on_finally: Handler = None, total: int | None = None,
              background: bool | None = None) -> Job | None:
        """Start ``make(job)`` (a core generator) as a job, or show why not (a conflicting job) and return None.

        Handlers (all in the GUI thread): ``on_event(job, event)``, ``on_done(job, result)``,
        ``on_cancelled(job)``, ``on_error(job, exc)`` (default: an error notification), ``on_finally(job)``.
        """
        resources = frozenset(resources)
        other = self.conflict(resources)
        if other is not None:
            notify(f"'{other.name}' is still running; wait for it to finish or cancel it before starting "
                   f"'{name}'.", "warning")
            return None
        job = Job(name, resources)
        self.jobs = [j for j in self.jobs if j.running] + [job]
        handlers = {"event": on_event, "done": on_done, "cancelled": on_cancelled, "error": on_error,
                    "finally": on_finally}
        self._open_progress(job, total)
        owner = getattr(on_done, "__self__", None)
        if owner is not None and hasattr(owner, "destroyed"):
            # the widget that started the job is closed (e.g. with the viewer): stop the job
            owner.destroyed.connect(functools.partial(_cancel_ref, weakref.ref(job)))
        job.background = bool(background if background is not None else self.background)
        gc_hold.hold()  # released in _on_finished (or shutdown): full collections skip the older objects meanwhile
        job.gc_held = True
        if job.background:
            self._start_worker(job, make, handlers)
        else:
            self._run_sync(job, make, handlers)
        return job

    def _start_worker(self, job: Job, make: Callable[[Job], Generator[Any, None, Any]],
                      handlers: dict[str, Handler]) -> None:
        from napari.qt.threading import create_worker

        worker = create_worker(drive_cancellable, job, make, _start_thread=False,
                               _worker_class=_cooperative_worker_class())
        worker.job = job
        job.worker = worker
        worker.started.connect(lambda: self._set_running(job))
        worker.yielded.connect(lambda ev: self._on_event(job, ev, handlers))
        worker.returned.connect(lambda value: self._on_return(job, value, handlers))
        worker.errored.connect(lambda exc: self._on_error(job, exc, handlers))
        worker.aborted.connect(lambda: self._on_return(job, CANCELLED, handlers))
        worker.finished.connect(lambda: self._on_finished(job, handlers))
        worker.start()

    def _run_sync(self, job: Job, make: Callable[[Job], Generator[Any, None, Any]], handlers: dict[str, Handler]) -> None:
        self._set_running(job)
        gen = drive_cancellable(job, make)
        try:
            while True:
                try:
                    event = next(gen)
                except StopIteration as stop:
                    self._on_return(job, stop.value, handlers)
                    break
                self._on_event(job, event, handlers)
        except Exception as exc:
            self._on_error(job, exc, handlers)
        finally:
            self._on_finished(job, handlers)

    # ------------------------------------------------------------------ callbacks (GUI thread)
    def _call(self, job: Job, handler: Handler, *args: Any) -> Any:
        if handler is None or job.detached:
            return None
        owner = getattr(handler, "__self__", None)
        if owner is not None and hasattr(owner, "objectName") and not alive(owner):
            return None  # the widget that started the job was closed
        try:
            return handler(job, *args)
        except Exception as exc:  # a handler bug must not take napari down
            self._handler_failed(job, exc)
            return None

    def _handler_failed(self, job: Job, exc: BaseException) -> None:
        log.error("handler of %s failed:\n%s", job.name, traceback.format_exc())
        report(f"{job.name}: internal error (see the log).", f"{type(exc).__name__}: {reason(exc)}", exc=exc)

    def _land(self, job: Job, steps: Generator[Any, None, Any], handlers: dict[str, Handler]) -> None:
        """Advance a done handler's generator one step per event-loop turn (all at once for a synchronous job);
        the job is done, and its ``finally`` handler runs, after the last step."""
        if not job.background:
            try:
                for _ in steps:
                    pass
            except Exception as exc:
                self._handler_failed(job, exc)
            return self._landed(job, handlers)
        from qtpy.QtCore import QTimer

        def step() -> None:
            try:
                if job.detached:  # the viewer closed meanwhile: stop writing into it
                    steps.close()
                    return self._landed(job, handlers)
                next(steps)
            except StopIteration:
                return self._landed(job, handlers)
            except Exception as exc:
                self._handler_failed(job, exc)
                return self._landed(job, handlers)
            QTimer.singleShot(STEP_GAP_MS, step)

        QTimer.singleShot(STEP_GAP_MS, step)

    def _landed(self, job: Job, handlers: dict[str, Handler]) -> None:
        job.state = "done"
        if job.finish_pending:
            job.finish_pending = False
            self._on_finished(job, handlers)

    def _set_running(self, job: Job) -> None:
        job.state = "running" if job.state == "pending" else job.state

    def _on_event(self, job: Job, event: Any, handlers: dict[str, Handler]) -> None:
        job.last_event = event
        self._update_progress(job, event)
        self._call(job, handlers["event"], event)

    def _on_return(self, job: Job, value: Any, handlers: dict[str, Handler]) -> None:
        if not job.running:
            return
        if isinstance(value, Failed):
            log.error("%s failed:\n%s", job.name, value.traceback)
            self._on_error(job, value.error, handlers)
        elif value is CANCELLED:
            job.state = "cancelled"
            self._call(job, handlers["cancelled"])
        else:
            job.state, job.result = "landing", value
            steps = self._call(job, handlers["done"], value)
            if isinstance(steps, Generator):
                self._land(job, steps, handlers)
            else:  # (the worker's finished signal may have come during the handler, e.g. in a nested loop)
                self._landed(job, handlers)

    def _on_error(self, job: Job, exc: BaseException, handlers: dict[str, Handler]) -> None:
        job.state, job.error = "failed", exc
        if handlers["error"] is not None:
            self._call(job, handlers["error"], exc)
        elif not job.detached:
            report(f"{job.name} failed: {reason(exc, 60)}.", exc=exc)

    def _on_finished(self, job: Job, handlers: dict[str, Handler]) -> None:
        if job.state == "landing":  # the done handler is still writing: finish after its last step
            job.finish_pending = True
            return
        if job.running:  # finished without a return value reaching us (should not happen)
            job.state = "cancelled" if job.cancel_requested.is_set() else "done"
        self._close_progress(job)
        self._release_gc(job)
        self._call(job, handlers["finally"])
        job.worker = None

    @staticmethod
    def _release_gc(job: Job) -> None:
        if job.gc_held:
            job.gc_held = False
            gc_hold.release()

    # ------------------------------------------------------------------ cancelling
    def cancel(self, job: Job | None, wait: float = 0.0) -> bool:
        """Request ``job`` to stop; with ``wait`` > 0 block up to that many seconds for its thread to finish."""
        if job is None or not job.running:
            return True
        job.cancel()
        if wait > 0 and job.worker is not None:
            return job.finished.wait(wait)
        return True

    def shutdown(self, wait: float = 10.0) -> None:
        """Cancel every job, wait up to ``wait`` s in total, and stop delivering their results (viewer closing)."""
        deadline = time.perf_counter() + wait
        jobs = self.running()
        for job in jobs:
            job.cancel()
        for job in jobs:
            if job.worker is not None:
                job.finished.wait(max(0.0, deadline - time.perf_counter()))
            job.detached = True
            self._close_progress(job)
            self._release_gc(job)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block (without an event loop) until no job runs; for scripts. Returns False on timeout."""
        deadline = time.perf_counter() + timeout
        for job in self.running():
            if not job.finished.wait(max(0.0, deadline - time.perf_counter())):
                return False
        return True

    # ------------------------------------------------------------------ napari progress + task status
    def _open_progress(self, job: Job, total: int | None) -> None:
        try:
            from napari.utils import progress

            job.pbar = progress(total=total or 0, desc=job.name)
        except Exception:
            job.pbar = None

    def _update_progress(self, job: Job, event: Any) -> None:
        pbar = job.pbar
        if pbar is None:
            return
        try:
            total = int(getattr(event, "total", 0) or 0)
            if total and pbar.total != total:
                pbar.total = total
            pbar.n = int(getattr(event, "done", 0) or 0)
            stage = getattr(event, "stage", "")
            if stage:
                pbar.set_description(f"{job.name}: {stage}", refresh=False)
            pbar.refresh()
        except Exception:
            pass

    def _close_progress(self, job: Job) -> None:
        if job.pbar is not None:
            try:
                job.pbar.close()
            except Exception:
                pass
            job.pbar = None


_WORKER_CLASS: Any = None


def _cooperative_worker_class() -> type:
    """A napari ``GeneratorWorker`` whose ``quit()`` (what napari's window calls on its tasks when it closes) asks
    the job to stop at its next yield, so :func:`drive_cancellable` closes the core generator in the worker thread
    and its clean-up runs (temp files, the fine-tuner's last checkpoint), instead of abandoning it mid-way."""
    global _WORKER_CLASS
    if _WORKER_CLASS is None:
        from napari.qt.threading import GeneratorWorker

        class CooperativeWorker(GeneratorWorker):
            job: Job | None = None

            def quit(self) -> None:  # noqa: D102
                if self.job is not None:
                    self.job.cancel()
                else:
                    super().quit()

        _WORKER_CLASS = CooperativeWorker
    return _WORKER_CLASS


_WARM_UPS: dict[str, threading.Thread] = {}


def warm_up(name: str, fn: Callable[[], Any], delay_s: float = 0.0) -> threading.Thread:
    """Run ``fn`` once per process in a background thread at a lower priority, ``delay_s`` after this call (e.g.
    the imports a job would otherwise make mid-way, holding the GIL:
    :func:`napari_neuroedge.training.warmup.import_training_path`; the delay lets the window paint what it just
    opened first: a GIL-holding import while napari paints a new dock stalled the loop 0.4 s, alone 0.16 s).
    Later calls with the same ``name`` return the same thread. A failure is logged, never raised: the job
    imports what it needs itself."""
    thread = _WARM_UPS.get(name)
    if thread is None:
        def run() -> None:
            lower_thread_priority()
            time.sleep(delay_s)
            gc_hold.hold()  # as a job does: its full collections skip the objects that were there before
            try:
                seconds = fn()
                log.debug("warm-up %s took %s s", name, seconds)
            except Exception:  # noqa: BLE001  (a warm-up is an optimisation)
                log.warning("warm-up %s failed", name, exc_info=True)
            finally:
                gc_hold.release()

        # not a daemon: a thread importing modules while the interpreter shuts down can crash it
        thread = threading.Thread(target=run, name=f"neuroedge-warm-up-{name}")
        _WARM_UPS[name] = thread
        thread.start()
    return thread
