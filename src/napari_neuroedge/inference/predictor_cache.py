"""Prepared predictors kept between runs of the same model, so a repeated prediction does not rebuild them.

Building a :class:`~.predict.TorchPredictor` means building the network from the checkpoint's weights, folding
its batch norms, moving it to the device and, on the CPU, to channels_last: about 0.05 s for the default U-Net
on an idle core, 0.1 s beside a busy GUI thread, which is a quarter of a 512^2 prediction without TTA. A
long-lived caller that predicts again and again with the same model (the napari session) keeps one
:class:`PredictorCache` and passes it in its requests; one-shot callers (the CLI) pass none. Blockwise workers
keep theirs in one per process (:func:`~.blockwise.sources.cached_predictor`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

#: Predictors kept: each holds a copy of its model's weights (8 MB for the default, 100+ MB for large ones).
CACHE_SIZE = 2


class PredictorCache:
    """A small least-recently-used map of prepared predictors (or other models built at a cost).

    :meth:`get` keys on (checkpoint *object*, device, precision, TTA): a checkpoint reloaded from a changed file
    (a fine-tune's new weights) is a new object and gets a new predictor. :meth:`lookup` keys on any hashable
    value: the blockwise workers' per-process cache keys on their predictor source (checkpoint hash and
    settings), and a caller may keep loaded checkpoints by (path, mtime) the same way. Thread-safe; an entry is
    built under the lock, so threads asking for the same one at once build it once; two jobs may run one
    predictor at once (its model is in eval and inference mode and keeps no state between calls). A smaller
    batch that the out-of-memory fallback chose (``TorchPredictor.shrink``) stays with the kept predictor.
    """

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = max(1, int(size))
        self._entries: OrderedDict[Hashable, tuple[Any, Any]] = OrderedDict()
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, checkpoint: Any, settings: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        """The predictor of ``checkpoint`` with ``settings`` (hashable: device, precision, TTA), from
        ``build()`` if there is none yet."""
        return self.lookup((id(checkpoint), *settings), build, owner=checkpoint)

    def lookup(self, key: Hashable, build: Callable[[], Any], owner: Any = None) -> Any:
        """The entry kept under ``key``, from ``build()`` if there is none yet. ``owner``: the object the entry
        belongs to, compared by identity (so an ``id`` in the key that was reused never hits)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] is owner:
                self._entries.move_to_end(key)
                return entry[1]
            value = build()
            self._entries[key] = (owner, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
            return value

    def predictors(self) -> list[Any]:
        """The kept predictors, least recently used first."""
        with self._lock:
            return [value for _, value in self._entries.values()]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
