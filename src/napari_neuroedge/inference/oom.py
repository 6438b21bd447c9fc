"""Out-of-memory fallback for a predictor: smaller batches first, then the CPU, each step said in a message.

:class:`OOMFallback` wraps any predictor (numpy (B, 1, t, t) -> (B, C, t, t)). When a call raises an
out-of-memory error (``torch.OutOfMemoryError``, or a RuntimeError saying "out of memory", as MPS and older
torch raise) it frees the accelerator's cache and retries the same tiles in batches of half the size, down to
one tile; then it halves the predictor's own TTA batch where it has one (``shrink()``); then it moves the
predictor to the CPU (``on_cpu()``). The smaller limits are kept for the rest of the run. The tile grid is never
changed mid-run (that would change the result), so "smaller tiles" means fewer tiles per forward pass.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger("napari_neuroedge")


def is_oom(exc: BaseException) -> bool:
    """True for torch's out-of-memory errors (CUDA, MPS, CPU allocator) and MemoryError."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _free_accelerator_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class OOMFallback:
    """A predictor that survives out-of-memory errors of ``predictor`` (see the module docstring).

    ``notes`` collects one message per fallback step (also logged as warnings).
    Attributes it lacks (``multiple``, ``context``, ``out_channels``, ``describe`` ...) come from the predictor.
    """

    def __init__(self, predictor: Callable[[np.ndarray], np.ndarray]) -> None:
        self.predictor = predictor
        self.limit: int | None = None  # tiles per call after a fallback (None: the whole batch)
        self.notes: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name == "predictor":  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.predictor, name)

    def _note(self, text: str) -> None:
        log.warning(text)
        self.notes.append(text)

    def _where(self) -> str:
        device = getattr(self.predictor, "device", None)
        return f" on {device}" if device is not None else ""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        n = int(batch.shape[0])
        while True:
            limit = min(self.limit or n, n)
            try:
                if limit >= n:
                    return np.asarray(self.predictor(batch))
                return np.concatenate([np.asarray(self.predictor(batch[i:i + limit])) for i in range(0, n, limit)])
            except Exception as exc:
                if not is_oom(exc):
                    raise
                _free_accelerator_cache()
                self._fall_back(exc, limit)

    def _fall_back(self, exc: BaseException, limit: int) -> None:
        """One step down (smaller batch, smaller TTA batch, CPU), or re-raise ``exc`` when none is left."""
        if limit > 1:
            self.limit = limit // 2
            self._note(f"out of memory{self._where()} with {limit} tiles per pass; retrying with {self.limit}")
            return
        shrink = getattr(self.predictor, "shrink", None)
        if shrink is not None and shrink():
            self._note(f"out of memory{self._where()} with one tile; retrying with a smaller TTA batch")
            return
        on_cpu = getattr(self.predictor, "on_cpu", None)
        device = getattr(self.predictor, "device", None)
        if on_cpu is not None and getattr(device, "type", str(device)) != "cpu":
            where = self._where()
            self.predictor = on_cpu()
            self.limit = None
            self._note(f"out of memory{where} even with one tile; continuing on the CPU (slower)")
            return
        raise exc
