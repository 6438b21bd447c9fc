"""The one prediction pipeline: a :class:`PredictionRequest` run into an :class:`OutputPlan` by :func:`iter_run`.

Every caller that predicts builds a request and runs it here: ``neuroedge predict`` (eager), the Predict widget
(in memory, or into disk-backed working arrays for large images, see :mod:`napari_neuroedge.io.workstore`),
``neuroedge calibrate``, training validation and the fine-tune's threshold recalibration. (Blockwise Dask
prediction computes its blocks with the same stitch kernel, :mod:`.stitch`, and thresholds through
:func:`threshold_into`.) So the model loading, the tiling, TTA, precision and device, the membrane threshold
and the instance step exist once:

1. the predictor: the request's own, or the model's (a bundled name, a path or a loaded checkpoint) as a
   :class:`~.predict.TorchPredictor` on the resolved device and precision, wrapped in the out-of-memory
   fallback (:mod:`.oom`: smaller batches, then the CPU, each step reported as a progress event);
2. the boundary probability (and TTA variance) tile by tile (:func:`~.predict.iter_predict`), each band of
   rows written to the probability sink and thresholded into the membrane sink on the way (no second pass);
   chunked (zarr) sinks are written a whole row of chunks at a time;
3. neuron instances per slice from the probability (watershed from seeds below the seed threshold), with ids
   unique across the stack (:func:`~.postprocess.stack_instance_ids`).

Sinks are any array-likes with ``shape``/``dtype`` and ``__setitem__`` (numpy, memory-mapped TIFF, zarr,
OME-Zarr level 0): (k, y, x) for k selected slices of a stack, (y, x) for a 2D image. :func:`iter_run` is a
generator yielding :class:`~napari_neuroedge.progress.ProgressEvent` after every tile batch (and instance
slice), so the caller's progress/cancel (:func:`~napari_neuroedge.progress.drive`) stops it between batches.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SEED_THRESHOLD, NormConfig, arch_display_name, TileConfig, TTAConfig
from ..progress import Progress, ProgressEvent, drive
from .oom import OOMFallback
from ..slices import SliceSpec, parse_slices
from .predict import Predictor
from .sinks import BandSink, Tee, ThresholdSink, is_chunked


@dataclass(frozen=True)
class PredictionRequest:
    """What to predict with: a model (bundled name, checkpoint path or loaded ``Checkpoint``) or a ready
    ``predictor`` (then ``device``/``precision``/``tta`` are its own), and how.

    ``threshold``/``seed_threshold``/``norm`` default (None) to the model's (0.5 / 0.3 / percentile for a bare
    predictor). ``slices``: indices of the stack's slices to predict, in output order (None: all; ignored for a
    2D image; or a spec such as "0:10", see :func:`~napari_neuroedge.slices.parse_slices`). ``threads`` > 0 sets torch's CPU threads (the GUI keeps one core for itself). ``cache``: a
    :class:`~.predictor_cache.PredictorCache` to take the prepared predictor from and keep it in (a long-lived
    caller predicting again with the same model; None: build it for this run).
    """

    model: Any = "default"
    predictor: Predictor | None = None
    tile: TileConfig = field(default_factory=TileConfig)
    tta: TTAConfig = field(default_factory=TTAConfig)
    precision: str = "auto"
    device: str = "auto"
    threshold: float | None = None
    seed_threshold: float | None = None
    slices: SliceSpec = None
    norm: NormConfig | None = None
    threads: int = 0
    cache: Any = field(default=None, compare=False, repr=False)


@dataclass
class OutputPlan:
    """Where each output goes (None: not computed): ``probability`` (float32 in [0, 1]), ``membranes`` (uint8,
    1 = membrane), ``variance`` (float32 TTA variance; needs TTA), ``instances`` (uint32/uint64 cell ids, see
    :func:`~.postprocess.instance_dtype`). ``check()``, if given, runs before every write to a chunked sink
    (e.g. to stop writing into a folder that was deleted)."""

    probability: Any = None
    membranes: Any = None
    variance: Any = None
    instances: Any = None
    check: Callable[[], None] | None = None

    def requested(self) -> list[str]:
        return [n for n in ("probability", "membranes", "variance", "instances") if getattr(self, n) is not None]


@dataclass
class PredictionOutcome:
    """What :func:`iter_run` did: the thresholds used, the predicted slices (None for a 2D image), the device
    line (e.g. ``"cpu, fp32, channels_last"``) and the out-of-memory fallback's messages."""

    threshold: float
    seed_threshold: float
    slices: list[int] | None
    device: str
    notes: list[str] = field(default_factory=list)


@dataclass
class Prepared:
    """A request resolved against its model: the predictor to run and the settings it implies."""

    predictor: Any
    norm: NormConfig
    threshold: float
    seed_threshold: float
    checkpoint: Any = None


def load_request_model(request: PredictionRequest) -> Any:
    """The request's checkpoint (None when it brings its own predictor): the model itself when it is a loaded
    checkpoint (anything with ``build()``), else loaded from its name or path."""
    from ..models.checkpoint import load_checkpoint

    if request.predictor is not None:
        return None
    return request.model if hasattr(request.model, "build") else load_checkpoint(request.model)


def prepare(request: PredictionRequest, checkpoint: Any, variance: bool = False) -> Prepared:
    """Build the predictor and resolve device, precision and thresholds. ``checkpoint``: the request's model,
    loaded (:func:`load_request_model`; None when the request brings its own predictor). ``variance``: the
    predictor must also return the TTA variance (channel 1).
    """
    ckpt = checkpoint
    if request.predictor is not None:
        predictor = request.predictor
        if variance and int(getattr(predictor, "out_channels", 1)) < 2:
            raise ValueError("the TTA variance needs a predictor with TTA 6 or 8 and variance on")
    else:
        from .device import resolve_device
        from .predict import TorchPredictor

        if variance and request.tta.n < 2:
            raise ValueError("the TTA variance needs TTA 6 or 8 (it is the variance over the TTA transforms)")
        device = resolve_device(request.device)
        if request.threads > 0 and device.type == "cpu":
            import torch

            torch.set_num_threads(request.threads)
        tta = TTAConfig(n=request.tta.n, variance=variance)

        def build() -> TorchPredictor:
            return TorchPredictor(ckpt.build(), device, tta=tta, precision=request.precision)

        if request.cache is None:
            predictor = build()
        else:
            predictor = request.cache.get(ckpt, (str(device), request.precision, tta.n, tta.variance), build)
    norm = request.norm or getattr(ckpt, "norm", None) or NormConfig()
    threshold = request.threshold if request.threshold is not None else getattr(ckpt, "threshold", 0.5)
    seed = request.seed_threshold if request.seed_threshold is not None else getattr(
        ckpt, "seed_threshold", SEED_THRESHOLD)
    return Prepared(predictor, norm, float(threshold), float(seed), ckpt)


def output_shape(volume_shape: Sequence[int], slices: Sequence[int] | None) -> tuple[int, ...]:
    """The shape of every output of a request: (k, y, x) for k selected slices of a stack, (y, x) for an image."""
    if len(volume_shape) == 2:
        return tuple(int(s) for s in volume_shape)
    k = len(parse_slices(slices, int(volume_shape[0])))
    return (k, int(volume_shape[-2]), int(volume_shape[-1]))


def scratch_probability(stack: contextlib.ExitStack, shape: Sequence[int]) -> np.ndarray:
    """A zero float32 array of ``shape`` in a temporary ``.npy`` file, deleted when ``stack`` closes: a
    probability read back after the prediction (instances, overlay) without holding the volume in memory."""
    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="neuroedge-prob-"))
    return np.lib.format.open_memmap(Path(folder) / "prob.npy", "w+", np.float32, tuple(shape))


def threshold_into(prob: Any, membranes: Any, threshold: float, band: int = 1024) -> None:
    """Membranes (uint8, ``prob >= threshold``) of a finished probability array, ``band`` rows at a time."""
    sink = ThresholdSink(membranes, threshold)
    planes = range(int(prob.shape[0])) if prob.ndim == 3 else [None]
    for z in planes:
        for y0 in range(0, int(prob.shape[-2]), band):
            key = (slice(y0, y0 + band),) if z is None else (z, slice(y0, y0 + band))
            sink[key] = np.asarray(prob[key])


class _Discard:
    """A sink that drops what it is given."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape, self.dtype = shape, np.dtype(np.float32)

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def _band_sink(target: Any, check: Callable[[], None] | None, flush: list[BandSink]) -> Any:
    if not is_chunked(target):
        return target
    sink = BandSink(target, check)
    flush.append(sink)
    return sink


def iter_run(volume: Any, request: PredictionRequest, outputs: OutputPlan
             ) -> Generator[ProgressEvent, None, PredictionOutcome]:
    """Predict ``volume`` ((y, x) or (z, y, x) array-like, read band by band) as ``request`` says into
    ``outputs``; yields ProgressEvents (tiles, then instance slices), returns a :class:`PredictionOutcome`.

    Raises ValueError for a bad volume, sink shape or a request that cannot give what is asked.
    """
    from .postprocess import instances_from_probability, stack_instance_ids
    from .predict import iter_predict

    if volume.ndim not in (2, 3):
        raise ValueError(f"expected a 2D image or 3D stack, got shape {tuple(volume.shape)}")
    wanted = outputs.requested()
    if not wanted:
        raise ValueError("nothing to predict: the output plan names no output")
    is_2d = volume.ndim == 2
    zs = None if is_2d else list(parse_slices(request.slices, int(volume.shape[0])))
    shape = output_shape(volume.shape, zs)
    for name in wanted:
        got = tuple(int(s) for s in getattr(outputs, name).shape)
        if got != shape:
            raise ValueError(f"the {name} output has shape {got}; this request needs {shape}")
    ckpt = load_request_model(request)
    if ckpt is not None:
        from .device import resolve_device

        arch = arch_display_name(getattr(ckpt, "arch", "model"))
        yield ProgressEvent(0, 0, f"building {arch} on {resolve_device(request.device).type}")
    prep = prepare(request, ckpt, variance=outputs.variance is not None)
    predictor = OOMFallback(prep.predictor)
    notes = predictor.notes
    device = str(getattr(prep.predictor, "describe", lambda: "")() or "")
    if device:
        yield ProgressEvent(0, 0, f"running on {device}", {"device": device})
    with contextlib.ExitStack() as scratch:
        prob = outputs.probability
        if prob is None and outputs.instances is not None:  # instances read the probability back: keep it on disk
            prob = scratch_probability(scratch, shape)
        flush: list[BandSink] = []
        first = [_band_sink(prob, outputs.check, flush)] if prob is not None else []
        if outputs.membranes is not None:
            first.append(ThresholdSink(_band_sink(outputs.membranes, outputs.check, flush), prep.threshold))
        sinks: list[Any] = [Tee(*first) if len(first) > 1 else first[0]] if first else []
        if outputs.variance is not None:
            if not sinks:  # the variance alone: channel 0 still has to go somewhere
                sinks.append(_Discard(shape))
            sinks.append(_band_sink(outputs.variance, outputs.check, flush))
        seen = 0
        for event in iter_predict(volume, predictor, sinks, tile=request.tile, norm=prep.norm, slices=zs):
            yield event
            while seen < len(notes):  # an out-of-memory fallback happened during that batch: say so
                yield ProgressEvent(event.done, event.total, notes[seen], {"warning": notes[seen]}, unit="tiles")
                seen += 1
        for sink in flush:
            sink.flush()
        if outputs.instances is not None:
            planes = [0] if zs is None else zs
            for i, z in enumerate(planes):
                cells = instances_from_probability(np.asarray(prob if is_2d else prob[i], np.float32),
                                                   prep.seed_threshold)
                ids = stack_instance_ids(cells, z, tuple(volume.shape))
                if outputs.check is not None:
                    outputs.check()
                if is_2d:
                    outputs.instances[...] = ids
                else:
                    outputs.instances[i] = ids
                del cells, ids
                yield ProgressEvent(i + 1, len(planes), "instances", unit="slices")
    return PredictionOutcome(prep.threshold, prep.seed_threshold, zs, device, notes)


def run(volume: Any, request: PredictionRequest, outputs: OutputPlan,
        progress: Progress | None = None) -> PredictionOutcome:
    """:func:`iter_run` to the end (``progress`` gets the events and may cancel)."""
    return drive(iter_run(volume, request, outputs), progress)


def predict_probability(volume: Any, request: PredictionRequest, progress: Progress | None = None) -> np.ndarray:
    """In-memory convenience: the float32 boundary probability of the request's slices (output-shaped)."""
    prob = np.zeros(output_shape(volume.shape, request.slices), np.float32)
    run(volume, request, OutputPlan(probability=prob), progress)
    return prob
