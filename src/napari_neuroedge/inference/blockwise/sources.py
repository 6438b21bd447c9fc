"""Predictor sources and volume references a Dask worker opens once per process (and the caches that keep
them): :class:`ModelSpec` (a checkpoint plus settings), :class:`InProcessSource` (a ready predictor),
:class:`VolumeRef` (a path, memmap or array). :func:`source_of` turns a
:class:`~napari_neuroedge.inference.pipeline.PredictionRequest` into a source. Every predictor a block task runs
is wrapped in the pipeline's out-of-memory fallback (:class:`~..oom.OOMFallback`: smaller batches, then the CPU),
kept per process in a :class:`~..predictor_cache.PredictorCache`."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ...config import NormConfig, TTAConfig, to_dict
from ..oom import OOMFallback
from ..predictor_cache import PredictorCache
from ..stitch import Predictor

DEVICE_ENV = "NEUROEDGE_DEVICE"  # set per worker by local_cluster(devices=...); read when device is "auto"


@runtime_checkable
class PredictorSource(Protocol):
    """Something a worker can turn into a predictor, once per process.

    ``key()`` is a JSON-able value naming the predictor and its settings (the per-process cache key, also
    stored with a resumable job so a rerun with other settings is refused); ``load()`` builds the predictor;
    ``describe()`` gives ``{"multiple": int, "out_channels": int}`` and optionally ``"norm"`` (NormConfig).
    """

    def key(self) -> Any: ...

    def load(self) -> Predictor: ...

    def describe(self) -> dict[str, Any]: ...


def worker_device(device: str = "auto") -> str:
    """The torch device for this process: ``auto`` -> ``$NEUROEDGE_DEVICE`` if set, else the best available."""
    if (device or "auto").lower() == "auto":
        env = os.environ.get(DEVICE_ENV, "").strip()
        if env:
            return env
        from ..device import resolve_device

        return str(resolve_device("auto"))
    return device


@dataclass(frozen=True)
class ModelSpec:
    """A checkpoint plus inference settings, small enough to send to every worker.

    ``checkpoint`` is a bundled name ("default") or a path readable by the workers; ``device`` is "auto"
    (the worker's assigned device, see :func:`local_cluster`), "cpu", "cuda", "cuda:1", ...; ``threads`` > 0
    sets torch's intra-op threads in the worker process. :meth:`resolved` (called for you by the blockwise
    functions) records the file's sha256, so a worker with another file and a rerun with another model are
    refused. ``loaded``: the checkpoint already loaded in this process (the client), used here instead of
    reading the file again; it is not sent to workers (they load the file once each).
    """

    checkpoint: str
    device: str = "auto"
    precision: str = "auto"
    tta: TTAConfig = field(default_factory=TTAConfig)
    threads: int = 0
    sha256: str = ""
    loaded: Any = field(default=None, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:  # pickled to workers without the client's loaded weights
        return {**self.__dict__, "loaded": None}

    def _checkpoint(self) -> Any:
        from ...models.checkpoint import load_checkpoint

        return self.loaded if self.loaded is not None else load_checkpoint(self.checkpoint)

    def resolved(self) -> ModelSpec:
        """With the checkpoint's sha256 filled in and a path made absolute (bundled names stay names, so
        workers with the package installed elsewhere find their own copy)."""
        from ...models.checkpoint import file_sha256
        from ...models.registry import bundled_models, resolve_checkpoint

        path = resolve_checkpoint(self.checkpoint).resolve()
        name = self.checkpoint if self.checkpoint in bundled_models() else str(path)
        return replace(self, checkpoint=name, sha256=self.sha256 or file_sha256(path))

    def key(self) -> Any:
        return ["torch-checkpoint", self.checkpoint, self.sha256, self.device, self.precision, to_dict(self.tta)]

    def load(self) -> Predictor:
        """The TorchPredictor on this process's device; refuses a checkpoint whose hash differs from the client's."""
        from ...models.checkpoint import file_sha256
        from ...models.registry import resolve_checkpoint
        from ..predict import TorchPredictor

        if self.sha256:
            found = file_sha256(resolve_checkpoint(self.checkpoint))
            if found != self.sha256:
                raise ValueError(f"{self.checkpoint}: this worker's checkpoint (sha256 {found[:12]}) differs from "
                                 f"the client's ({self.sha256[:12]}); give every worker the same file")
        if self.threads > 0:
            import torch

            torch.set_num_threads(self.threads)
        model = self._checkpoint().build()
        return TorchPredictor(model, worker_device(self.device), tta=self.tta, precision=self.precision)

    def describe(self) -> dict[str, Any]:
        ckpt = self._checkpoint()
        model = ckpt.build()
        return {"multiple": int(getattr(model, "multiple", 1)), "context": ckpt.context,
                "out_channels": 2 if (self.tta.n > 1 and self.tta.variance) else 1, "norm": ckpt.norm}


class InProcessSource:
    """Wraps a ready predictor (for the threaded scheduler, lazy napari layers and tests), in the out-of-memory
    fallback. ``norm``: the normalisation its model expects (None: the default's).

    With a distributed cluster the predictor is pickled to every worker; prefer :class:`ModelSpec` there.
    """

    def __init__(self, predictor: Predictor, name: str | None = None, norm: NormConfig | None = None) -> None:
        self.predictor = predictor
        self.guarded = OOMFallback(predictor)
        self.norm = norm
        self.name = name or f"in-process-{type(predictor).__name__}-{id(predictor)}"

    def key(self) -> Any:
        return ["in-process", self.name]

    def load(self) -> Predictor:
        return self.predictor

    def describe(self) -> dict[str, Any]:
        return {"multiple": int(getattr(self.predictor, "multiple", 1)),
                "context": int(getattr(self.predictor, "context", 0)),
                "out_channels": int(getattr(self.predictor, "out_channels", 1)),
                **({"norm": self.norm} if self.norm is not None else {})}


def as_source(model: Any, device: str = "auto", precision: str = "auto", tta: TTAConfig | None = None,
              threads: int = 0) -> PredictorSource:
    """A :class:`PredictorSource` for a source, a checkpoint name/path (-> ModelSpec with these settings) or a
    predictor callable (-> :class:`InProcessSource`); the settings apply only to a name/path."""
    if isinstance(model, PredictorSource):
        return model
    if isinstance(model, (str, Path)):
        return ModelSpec(str(model), device=device, precision=precision, tta=tta or TTAConfig(), threads=threads)
    if callable(model):
        return InProcessSource(model)
    raise TypeError(f"expected a checkpoint name/path, a ModelSpec or a predictor, got {type(model).__name__}")


def source_of(request: Any, variance: bool = False) -> PredictorSource:
    """The predictor source of a :class:`~napari_neuroedge.inference.pipeline.PredictionRequest`: its
    ``predictor``, or its ``model``: a source or :class:`ModelSpec` (its own settings), a bundled name or path
    (a :class:`ModelSpec` with the request's device, precision, TTA and threads), or a loaded checkpoint (a
    :class:`ModelSpec` of the file it was loaded from, reusing the loaded weights in this process; one made in
    memory is prepared here, through the request's predictor cache, as :func:`~..pipeline.prepare` does).
    ``variance``: the predictor must also give the TTA variance (channel 1)."""
    model = request.predictor if request.predictor is not None else request.model
    tta = TTAConfig(n=request.tta.n, variance=request.tta.variance or variance)
    if hasattr(model, "build"):
        origin = getattr(model, "origin", None)
        if origin is None:
            from ..pipeline import prepare

            prep = prepare(replace(request, tta=tta), model, variance=tta.variance)
            return InProcessSource(prep.predictor, norm=prep.norm)
        return ModelSpec(str(origin), device=request.device, precision=request.precision, tta=tta,
                         threads=request.threads, loaded=model)
    return as_source(model, device=request.device, precision=request.precision, tta=tta, threads=request.threads)


#: Predictors kept per worker process (each a copy of its model's weights); one per distinct source is the rule.
WORKER_CACHE_SIZE = 4
_WORKER_PREDICTORS = PredictorCache(WORKER_CACHE_SIZE)
_CACHE_LOCK = threading.Lock()  # the open volumes below
_LOADS: list[str] = []  # keys loaded by this process, in order (see load_count)


def cached_predictor(source: PredictorSource) -> Predictor:
    """The predictor for ``source`` in the out-of-memory fallback, loaded at most once per process
    (thread-safe).

    An :class:`InProcessSource`'s own is returned (not cached, so it is freed with its owner).
    """
    if isinstance(source, InProcessSource):
        return source.guarded
    key = json.dumps(source.key(), sort_keys=True, default=str)

    def load() -> Predictor:
        _LOADS.append(key)
        return OOMFallback(source.load())

    return _WORKER_PREDICTORS.lookup(key, load)


def load_count() -> int:
    """How many predictors this process has loaded (one per distinct source; for tests and benchmarks)."""
    return len(_LOADS)


def clear_predictor_cache() -> None:
    """Forget this process's cached predictors (frees their memory)."""
    _WORKER_PREDICTORS.clear()


# ------------------------------------------------------------------------------------------- volume references

@dataclass(frozen=True)
class VolumeRef:
    """A picklable handle on an input volume: a path (reopened lazily per process), a raw memmap or an array."""

    path: str | None = None
    memmap: tuple[str, int, str, tuple[int, ...]] | None = None  # (file, offset, dtype, shape)
    array: Any = None

    def open(self) -> Any:
        """The array (opened once per process and kept in a small cache, keyed by file and mtime)."""
        if self.array is not None:
            return self.array
        fname = self.path if self.path is not None else self.memmap[0]  # type: ignore[index]
        try:
            stamp = os.stat(fname).st_mtime_ns
        except OSError:
            stamp = 0
        key = json.dumps([self.path, self.memmap, stamp])
        with _CACHE_LOCK:
            data = _VOLUMES.pop(key, None)
            if data is not None:
                _VOLUMES[key] = data  # most recently used last
                return data
        if self.path is not None:
            from ...io.stacks import open_stack

            data = open_stack(self.path).data
        else:
            fname, offset, dtype, shape = self.memmap  # type: ignore[misc]
            data = np.memmap(fname, dtype=np.dtype(dtype), mode="r", offset=offset, shape=tuple(shape))
        with _CACHE_LOCK:
            data = _VOLUMES.setdefault(key, data)
            while len(_VOLUMES) > _MAX_OPEN:
                _VOLUMES.pop(next(iter(_VOLUMES)))
        return data

    def describe(self) -> str:
        """A stable description (path, memmap file, zarr store or a hash of a strided sample of an array)."""
        if self.path is not None:
            return str(self.path)
        if self.memmap is not None:
            return f"memmap:{self.memmap[0]}@{self.memmap[1]}"
        store = getattr(self.array, "store_path", None) or getattr(self.array, "store", None)
        if store is not None and not isinstance(self.array, np.ndarray):
            return f"{type(self.array).__name__}:{store}"
        arr = self.array
        step = max(1, int((int(np.prod(arr.shape)) / 2**20) ** (1 / max(arr.ndim, 1))))
        sample = np.ascontiguousarray(np.asarray(arr[(slice(None, None, step),) * arr.ndim]))
        return f"array:{type(arr).__name__}:{hashlib.sha256(sample.tobytes()).hexdigest()[:16]}"


_VOLUMES: dict[str, Any] = {}
_MAX_OPEN = 4  # volumes kept open per process


def volume_ref(volume: Any) -> VolumeRef:
    """Wrap a path or array-like; a whole-file np.memmap becomes (file, offset) so workers map it themselves."""
    import mmap

    if isinstance(volume, (str, Path)):
        return VolumeRef(path=str(Path(volume).resolve()))
    if (isinstance(volume, np.memmap) and getattr(volume, "filename", None) and isinstance(volume.base, mmap.mmap)
            and volume.flags.c_contiguous):
        return VolumeRef(memmap=(str(volume.filename), int(volume.offset), volume.dtype.str,
                                 tuple(int(s) for s in volume.shape)))
    return VolumeRef(array=volume)
