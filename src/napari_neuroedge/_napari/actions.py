"""What the widgets do, without Qt: the prediction job they run in the background and the layer updates that
follow from the correction ledger. Widgets import this module, the state (:mod:`.state`, :mod:`.ledger`) and
their shared helpers, never each other.

:func:`predict_job` builds the core :class:`~napari_neuroedge.inference.pipeline.PredictionRequest` from the Predict
widget's settings and runs the core pipeline (the same code path as ``neuroedge predict``), returning a
:class:`PredictResult`; :func:`update_difference` fills ``<image> difference`` against the prediction the user
corrected (:meth:`~.ledger.Ledger.reference_of`). :func:`finetune_job` runs the core's fine-tune service on
the Fine-tune widget's data and options; :func:`remove_run_folder` and :func:`nearest_uncorrected` are what
follows a cancelled or a finished run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SEED_THRESHOLD
from ..inference.sinks import readable
from ..io.workstore import OutputStore
from . import tracking
from .text import short_name

log = logging.getLogger("napari_neuroedge")

DIFF_COLORS = {1: (0.2, 1.0, 0.2, 1.0), 2: (1.0, 0.2, 1.0, 1.0)}  # added: green, removed: magenta


@dataclass
class PredictResult:
    """What a prediction job hands back to the GUI thread; arrays are (k, y, x) for the k predicted slices.

    With ``lazy`` they are staged OME-Zarr arrays of the session's :class:`~napari_neuroedge.io.workstore.OutputStore`
    ((y, x) for a 2D image) that the GUI thread adopts as layer data or copies into it, then deletes.
    """

    image: str
    slices: list[int]
    is_2d: bool
    shape: tuple[int, ...]
    prob: np.ndarray
    membranes: np.ndarray
    variance: np.ndarray | None = None
    instances: np.ndarray | None = None
    threshold: float = 0.5
    model: dict[str, Any] = field(default_factory=dict)
    lazy: bool = False

    def arrays(self) -> list[Any]:
        return [a for a in (self.prob, self.membranes, self.variance, self.instances) if a is not None]


def gui_threads() -> int:
    """Torch threads for background jobs: all cores but one, which stays with the GUI thread."""
    return max(1, (os.cpu_count() or 2) - 1)


def _model_file(session: Any, model_name: str) -> str:
    """ "default.pt, 7.9 MB": the file a model is loaded from, for the progress line."""
    source = (getattr(session, "models", None) or {}).get(model_name, model_name)
    try:
        from ..models.registry import resolve_checkpoint

        path = resolve_checkpoint(source)
        return f"{short_name(path.name, 32)}, {path.stat().st_size / 1e6:.1f} MB"
    except Exception:  # the load itself reports a missing or broken file
        return short_name(str(source), 32)


def predict_job(data: Any, slices: list[int], is_2d: bool, image_name: str, session: Any, model_name: str,
                device_name: str, tile: int, context: int, tta: int, uncertainty: bool, threshold: float,
                instances: bool, store: OutputStore | None = None, seed_threshold: float = SEED_THRESHOLD,
                voxel_size: tuple[float, ...] | None = None):
    """Generator (runs in the worker): the widget's settings as a core :class:`PredictionRequest`, run by the
    core pipeline; returns a :class:`PredictResult`.

    ``data`` is read lazily, band by band. Without ``store`` the outputs are numpy arrays of the predicted
    slices; with one they are staged OME-Zarr arrays in it (scale ``voxel_size`` in nm, if known) and memory
    stays bounded by tile and chunk size.
    """
    from ..config import TileConfig, TTAConfig
    from ..inference.pipeline import OutputPlan, PredictionRequest, iter_run
    from ..inference.postprocess import instance_dtype
    from ..progress import ProgressEvent
    from ..inference.staged import iter_staged

    yield ProgressEvent(0, 0, f"loading PyTorch and model '{model_name}' ({_model_file(session, model_name)})")
    from ..inference.device import resolve_device

    ckpt = session.checkpoint(model_name)
    meta = session.model_meta(model_name)
    device = resolve_device(device_name)
    variance = uncertainty and tta > 1
    request = PredictionRequest(model=ckpt, tile=TileConfig(tile=tile, context=context,
                                                            batch=4 if device.type == "cuda" else 1),
                                tta=TTAConfig(n=tta), device=str(device), threshold=threshold,
                                seed_threshold=seed_threshold, slices=None if is_2d else list(slices),
                                threads=gui_threads(), cache=getattr(session, "predictors", None))
    data = readable(data)  # a folder of slices: read each file once, not once per tile
    done = [0] if is_2d else list(slices)
    if store is not None:
        staged, _ = yield from iter_staged(data, request, store, variance=variance, instances=instances,
                                           voxel_size=voxel_size)
        return PredictResult(image_name, done, is_2d, tuple(data.shape), staged.probability, staged.membranes,
                             staged.variance, staged.instances, threshold, meta, lazy=True)
    k, h, w = len(done), int(data.shape[-2]), int(data.shape[-1])
    prob = np.zeros((k, h, w), np.float32)
    membranes = np.zeros((k, h, w), np.uint8)
    var = np.zeros((k, h, w), np.float32) if variance else None
    inst = np.zeros((k, h, w), instance_dtype(tuple(data.shape))) if instances else None
    plan = OutputPlan(*(None if a is None else (a[0] if is_2d else a) for a in (prob, membranes, var, inst)))
    yield from iter_run(data, request, plan)
    return PredictResult(image_name, done, is_2d, tuple(data.shape), prob, membranes, var, inst, threshold, meta)


def update_difference(viewer: Any, membranes: Any, slices: Any = None, create: bool = True) -> Any:
    """Fill ``<image> difference`` (1 = added, 2 = removed by the user) for ``slices`` (default: predicted ones)."""
    image = tracking.image_of(viewer, membranes)
    if image is None:
        return None
    diff = tracking.companion(viewer, image.name, "difference")
    if diff is None or tuple(diff.data.shape) != tuple(membranes.data.shape):
        if not create:
            return None
        if diff is not None:
            viewer.layers.remove(diff)
        diff = viewer.add_labels(tracking.blank(tuple(membranes.data.shape), np.uint8),
                                 name=tracking.layer_name(image.name, "difference"), scale=membranes.scale,
                                 translate=membranes.translate, opacity=0.9,
                                 colormap=tracking.membrane_colormap(DIFF_COLORS),
                                 metadata={tracking.KEY: {"role": "difference", "image": image.name}})
        meta = tracking.info(diff)
        meta["role"], meta["image"] = "difference", image.name
        viewer.layers.selection.active = membranes
    zs = sorted(tracking.ledger_of(membranes).predicted) if slices is None else sorted(slices)
    for z in zs:
        pred = tracking.reference_prediction(viewer, membranes, z)
        label = tracking.slice_of(membranes.data, z)
        d = tracking.difference_map(label, pred) if pred is not None else np.zeros(label.shape, np.uint8)
        if membranes.ndim == 2:
            diff.data[...] = d
        else:
            diff.data[z] = d
    diff.refresh()
    return diff


def finetune_job(job: Any, session: Any, model_name: str, raw: list[dict[str, Any]] | None, folder: str | None,
                 replay_folder: str | None, options: Any, run_dir: Path, dest: Path):
    """Generator (runs in the worker): data -> the core's fine-tune service (:func:`iter_finetune`, the same one
    ``neuroedge finetune`` runs) -> the finished model at ``dest``; ``job.extra["outcome"]`` (``job``: a
    :class:`~.workers.Job`) says what was kept."""
    from ..inference.normalize import normalize_slice
    from ..progress import ProgressEvent
    from ..training.dataset import LabelledSlice, load_training_folder
    from ..training.finetune import FinetuneOutcome, iter_finetune

    yield ProgressEvent(0, 0, "preparing the corrected slices")
    init = session.checkpoint(model_name)
    norm = init.norm
    if folder:
        train = load_training_folder(folder, norm)
    else:
        train = [LabelledSlice(normalize_slice(r["image"], norm), r["label"], r["mask"], r["corrected"], r["meta"])
                 for r in raw or []]
    replay = load_training_folder(replay_folder, norm) if replay_folder else []
    outcome = job.extra.setdefault("outcome", FinetuneOutcome())
    prov = {"parent": session.model_meta(model_name),
            "data": folder or f"viewer: {len(train)} corrected slice(s)", "replay": replay_folder,
            "finetuned_by": "napari-neuroedge one-click fine-tune"}
    return (yield from iter_finetune(init, train, run_dir, dest, options=options, replay=replay, provenance=prov,
                                     outcome=outcome))


def remove_run_folder(run_dir: Path) -> bool:
    """Delete the run folder of a run that kept nothing (its last.pt was never validated); the models folder
    and other runs are not touched. Returns False if it could not be removed."""
    import shutil

    if not run_dir.exists():
        return True
    try:
        shutil.rmtree(run_dir)
    except OSError as exc:
        log.warning("could not remove the run folder %s: %s", run_dir, exc)
        return False
    return True


def nearest_uncorrected(viewer: Any, image: Any) -> int | None:
    """Go to the current slice of ``image`` if it is not corrected, else to the nearest one that is not (a new
    model is seen where it was not trained); returns it (None for a 2D image or when every slice is corrected)."""
    if image.data.ndim != 3:
        return None
    membranes = tracking.companion(viewer, image.name, "membranes")
    corrected = tracking.ledger_of(membranes).corrected if membranes is not None else frozenset()
    z = tracking.current_slice(viewer, image)
    free = [k for k in range(int(image.data.shape[0])) if k not in corrected]
    if not free:
        return None
    best = min(free, key=lambda k: (abs(k - z), k))
    if best != z:
        tracking.go_to_slice(viewer, image, best)
    return best
