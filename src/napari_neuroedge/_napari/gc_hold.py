"""While a job runs, full garbage collections leave the objects that existed before it alone (issue 22).

With napari, torch and ``torch._dynamo`` loaded a process tracks about 500,000 objects and a full (generation 2)
collection of them holds the GIL 0.18-0.3 s in whichever thread triggers it: the window stops responding
(``benchmarks/bench_gui_latency.py`` counts them). :func:`hold` moves every object tracked so far into the
collector's permanent generation (``gc.freeze()``, O(1)), so collections during the job scan only what the job
created; :func:`release` (when the last running job has ended) puts them back (``gc.unfreeze()``), so nothing
that became garbage meanwhile (a deleted layer, say) stays uncollected after the job. Where something else in
the process froze objects first, this module leaves the collector as it found it.
"""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
_holders = 0
_froze = False  # whether our hold did the freeze (not someone else's gc.freeze() before it)


def hold() -> None:
    """One more running job; the first freezes the objects tracked so far."""
    global _holders, _froze
    with _lock:
        if _holders == 0:
            _froze = gc.get_freeze_count() == 0
            if _froze:
                gc.freeze()
        _holders += 1


def release() -> None:
    """One running job fewer; the last unfreezes what the first froze."""
    global _holders, _froze
    with _lock:
        if _holders == 0:
            return
        _holders -= 1
        if _holders == 0 and _froze:
            gc.unfreeze()
            _froze = False


def holders() -> int:
    """How many running jobs hold the freeze."""
    return _holders
