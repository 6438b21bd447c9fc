"""Dask scheduling of block tasks: local clusters (one worker per device), clients, and running the tasks on the
threaded or a distributed scheduler while reporting each finished block."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .geometry import Block
from .plan import _Plan, _slice_stats_task
from .sources import DEVICE_ENV


def _require_dask() -> None:
    try:
        import dask  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("blockwise prediction needs dask: pip install 'napari-neuroedge[dask]'") from None


#: A block task: (plan, block, cancel event or None, *per-slice stats) -> info dict (see job._block_write_task).
BlockTask = Callable[..., dict[str, Any]]


def local_cluster(workers: int | None = None, devices: Sequence[str] | None = None, threads_per_worker: int = 1,
                  memory_limit: str | float = "auto", dashboard: bool = False) -> Any:
    """A local Dask cluster of worker *processes* (call ``.close()`` or use ``with``).

    ``devices`` (e.g. ``["cuda:0", "cuda:1"]`` or ``["cpu", "cpu"]``) starts one worker per entry: a
    ``cuda:i`` worker sees only GPU i (``CUDA_VISIBLE_DEVICES=i``) and uses it as ``cuda``; others get
    ``NEUROEDGE_DEVICE`` set so ``ModelSpec(device="auto")`` picks it. Without devices, ``workers`` processes
    (default: one per CPU core) use the best device each finds.
    """
    _require_dask()
    from distributed import Nanny, Scheduler, SpecCluster

    if devices is not None:
        devices = [str(d) for d in devices]
        if not devices:
            raise ValueError("devices must name at least one device")
    n = len(devices) if devices is not None else int(workers or os.cpu_count() or 1)
    specs = {f"neuroedge-{i}": {"cls": Nanny, "options": {
        "nthreads": int(threads_per_worker), "env": env, "host": "127.0.0.1", "silence_logs": logging.WARNING,
        "memory_limit": _memory_limit(memory_limit, n)}} for i, env in enumerate(worker_envs(n, devices))}
    scheduler = {"cls": Scheduler, "options": {"dashboard": dashboard, "dashboard_address": ":0", "host": "127.0.0.1"}}
    return SpecCluster(workers=specs, scheduler=scheduler, silence_logs=logging.WARNING, name="neuroedge")


def worker_envs(n: int, devices: Sequence[str] | None = None) -> list[dict[str, str]]:
    """Environment variables for each of ``n`` local workers, one per entry of ``devices`` when given."""
    if n < 1:
        raise ValueError(f"need at least one worker, got {n}")
    if devices is None:
        return [{} for _ in range(n)]
    envs = []
    for i, dev in enumerate(str(d).lower() for d in devices):
        if dev.startswith("cuda"):
            index = dev.split(":", 1)[1] if ":" in dev else str(i)
            envs.append({"CUDA_VISIBLE_DEVICES": index, DEVICE_ENV: "cuda"})
        elif dev in ("cpu", "mps"):
            envs.append({DEVICE_ENV: dev})
        else:
            raise ValueError(f"unknown device {dev!r}; expected cpu, mps, cuda or cuda:N")
    return envs


def _memory_limit(limit: str | float, n: int) -> Any:
    if limit != "auto":
        return limit
    try:
        import psutil

        return int(psutil.virtual_memory().total / n)
    except ImportError:
        return "auto"


@contextlib.contextmanager
def dask_client(scheduler: Any, workers: int | None = None, devices: Sequence[str] | None = None
                ) -> Iterator[Any]:
    """Yield a ``distributed.Client`` for ``scheduler``: "local" (a new :func:`local_cluster`, closed after),
    an address ("tcp://host:8786", "host:8786") or an existing Client (not closed after)."""
    _require_dask()
    from distributed import Client

    if isinstance(scheduler, Client):
        yield scheduler
        return
    if scheduler == "local":
        with local_cluster(workers, devices) as cluster, Client(cluster) as client:
            yield client
        return
    with Client(str(scheduler)) as client:
        yield client


def _stats_key(plan_key: str, k: int) -> tuple[str, int]:
    return (f"neuroedge-stats-{plan_key}", k)


def _build_tasks(plan: _Plan, todo: Sequence[Block], cancel: Any, task: BlockTask) -> list[Any]:
    """Delayed block tasks (one per block) depending on delayed per-slice stats (one per slice needed)."""
    from dask import delayed

    tag = f"{os.getpid():x}-{time.monotonic_ns():x}"
    plan_d = delayed(plan, name=f"neuroedge-plan-{tag}", traverse=False)
    stats: dict[int, Any] = {}
    tasks = []
    for b in todo:
        deps = []
        for k in range(b.z0, b.z1):
            if k not in stats:
                stats[k] = delayed(_slice_stats_task, pure=False)(plan_d, k, dask_key_name=_stats_key(tag, k))
            deps.append(stats[k])
        tasks.append(delayed(task, pure=False)(plan_d, b, cancel, *deps,
                                                            dask_key_name=f"neuroedge-block-{tag}-{b.name}"))
    return tasks


def check_scheduler(scheduler: Any) -> None:
    """Raise ValueError unless ``scheduler`` is one :func:`iter_predict_blockwise` understands."""
    if scheduler is None or not isinstance(scheduler, str):
        return
    if scheduler not in ("threads", "sync", "synchronous", "local") and ":" not in scheduler:
        raise ValueError(f"unknown scheduler {scheduler!r}; expected threads, sync, local, a scheduler address "
                         "(tcp://host:8786) or a distributed.Client")


def _run_blocks(plan: _Plan, todo: Sequence[Block], task: BlockTask, scheduler: Any, workers: int | None,
                devices: Sequence[str] | None, retries: int) -> Iterator[dict[str, Any]]:
    """Run the block tasks on ``scheduler``; yields each finished block's info as it completes."""
    if not todo:
        return
    check_scheduler(scheduler)
    if scheduler in (None, "threads", "sync", "synchronous"):
        yield from _run_local(plan, todo, task, "sync" if scheduler in ("sync", "synchronous") else "threads",
                              int(workers or 1))
        return
    with dask_client(scheduler, workers, devices) as client:
        yield from _run_distributed(client, plan, todo, task, retries)


def _run_local(plan: _Plan, todo: Sequence[Block], task: BlockTask, scheduler: str, workers: int) -> Iterator[dict[str, Any]]:
    import dask

    cancel = threading.Event()
    events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def notify(info: dict[str, Any]) -> dict[str, Any]:
        events.put(("block", info))
        return info

    tasks = [dask.delayed(notify, pure=False)(t) for t in _build_tasks(plan, todo, cancel, task)]

    def run() -> None:
        try:
            dask.compute(*tasks, scheduler=scheduler, num_workers=workers)
            events.put(("end", None))
        except BaseException as exc:  # handed to the consuming thread
            events.put(("error", exc))

    thread = threading.Thread(target=run, name="neuroedge-blockwise", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = events.get()
            if kind == "block":
                yield value
            elif kind == "error":
                raise value
            else:
                break
    finally:
        cancel.set()  # stops blocks not yet started if the consumer stopped early
        thread.join()


def _run_distributed(client: Any, plan: _Plan, todo: Sequence[Block], task: BlockTask,
                     retries: int) -> Iterator[dict[str, Any]]:
    from distributed import as_completed

    futures = client.compute(_build_tasks(plan, todo, None, task), retries=retries)
    try:
        for fut in as_completed(futures):
            yield fut.result()
    finally:
        client.cancel([f for f in futures if not f.done()])
