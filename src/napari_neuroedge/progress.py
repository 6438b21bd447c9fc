"""Progress reporting and cooperative cancellation, injected into core jobs as plain callbacks.

Core jobs are generators that yield :class:`ProgressEvent` between units of work (tile batches, training
steps). :func:`drive` drains such a generator, forwarding events to a :class:`Progress` and stopping at the
next yield once ``should_stop()`` is true. The napari layer maps these onto its own progress bars and
cancel buttons; nothing here imports a GUI toolkit.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

R = TypeVar("R")


class Cancelled(Exception):
    """A job was stopped by its caller's cancel request."""


@dataclass
class ProgressEvent:
    """``done`` of ``total`` units finished; ``unit`` names them ("tiles", "steps", "slices", "blocks"); ``info``
    carries job-specific numbers (loss, metric, ...)."""

    done: int
    total: int
    stage: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    unit: str = ""


class Progress(Protocol):
    """What a caller passes to follow and stop a job."""

    def update(self, event: ProgressEvent) -> None: ...

    def should_stop(self) -> bool: ...


class NullProgress:
    """Reports nothing and never stops."""

    def update(self, event: ProgressEvent) -> None:  # noqa: D102
        pass

    def should_stop(self) -> bool:  # noqa: D102
        return False


class CallbackProgress:
    """Adapts two plain callables (either may be None) to :class:`Progress`."""

    def __init__(self, on_update: Callable[[ProgressEvent], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self._on_update = on_update
        self._should_stop = should_stop

    def update(self, event: ProgressEvent) -> None:  # noqa: D102
        if self._on_update is not None:
            self._on_update(event)

    def should_stop(self) -> bool:  # noqa: D102
        return bool(self._should_stop()) if self._should_stop is not None else False


def drive(job: Generator[ProgressEvent, None, R] | Iterator[ProgressEvent], progress: Progress | None = None) -> R:
    """Run a job generator to completion and return its return value.

    Raises :class:`Cancelled` at the first yield after ``progress.should_stop()`` turns true; the generator is
    closed first so its ``finally`` blocks (temp-file clean-up) run.
    """
    progress = progress or NullProgress()
    try:
        while True:
            if progress.should_stop():
                job.close()  # type: ignore[union-attr]
                raise Cancelled("cancelled by the user")
            event = next(job)
            progress.update(event)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
