"""Per-layer bookkeeping and the plugin's output layers.

Layer names: for an image layer ``<image>`` the plugin owns ``<image> boundary`` (Image, float32 probability),
``<image> membranes`` (Labels uint8, 1 = membrane), ``<image> instances`` (Labels uint32),
``<image> uncertainty`` (Image, TTA variance), ``<image> difference`` (Labels: 1 = membrane the user added,
2 = membrane the user removed) and reads ``<image> ignore`` (Labels: painted = not labelled).

Every plugin layer's ``metadata["neuroedge"]`` holds its ``role`` and ``image`` (the image layer's name); a
membrane layer's also holds its ``ledger``: the :class:`~.ledger.Ledger` of what was done to each slice (predicted,
by which model and threshold, edited, corrected, never predicted, the reference prediction, exported) and the
rules that follow from it (:func:`~.ledger.ledger_of`). Only the membrane layer keeps that record: the boundary
and uncertainty layers hold the pixels of the predictions it lists. Slices are ints (0 for a 2D image).

:func:`track_viewer` connects the paint events (and undo / redo) of every membrane and ignore layer of a viewer:
the bookkeeping above, the session's ``corrections_changed`` / ``slices_painted`` signals, and the per-slice
summary rows of :func:`cached_rows`, dropped only for the slices a stroke changed.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from .labels_fix import check_labels_by_dtype
from .ledger import KEY, ledger_of

SUFFIXES = {"boundary": " boundary", "membranes": " membranes", "instances": " instances",
            "uncertainty": " uncertainty", "difference": " difference", "ignore": " ignore"}
MEMBRANE_COLOR = (0.0, 1.0, 1.0, 1.0)  # cyan


def layer_name(image_name: str, role: str) -> str:
    return image_name + SUFFIXES[role]


def info(layer: Any) -> dict[str, Any]:
    """The plugin's dict in ``layer.metadata`` (``role``, ``image``; created on first use). A membrane layer's
    per-slice record is its :func:`~.ledger.ledger_of`."""
    meta = layer.metadata.setdefault(KEY, {})
    meta.setdefault("role", "")
    return meta


def info_role(layer: Any) -> str:
    """The plugin role of a layer ("" for layers the plugin did not make); never creates metadata."""
    meta = getattr(layer, "metadata", None)
    return str(meta.get(KEY, {}).get("role", "")) if isinstance(meta, dict) else ""


def image_of(viewer: Any, layer: Any) -> Any:
    """The image layer a plugin layer belongs to (by metadata, else by name suffix), or None."""
    name = layer.metadata.get(KEY, {}).get("image") if layer is not None else None
    if name is None and layer is not None:
        for suffix in SUFFIXES.values():
            if layer.name.endswith(suffix):
                name = layer.name[: -len(suffix)]
                break
    return viewer.layers[name] if name and name in viewer.layers else None


def companion(viewer: Any, image_name: str, role: str) -> Any:
    """The ``role`` layer of an image, or None."""
    name = layer_name(image_name, role)
    return viewer.layers[name] if name in viewer.layers else None


def image_array(layer: Any) -> Any:
    """The full-resolution data of an image layer (level 0 when multiscale)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def slice_of(data: Any, z: int) -> np.ndarray:
    """Slice ``z`` of a (z, y, x) array-like, or the whole array when it is 2D."""
    return np.asarray(data) if data.ndim == 2 else np.asarray(data[z])


def current_slice(viewer: Any, layer: Any) -> int:
    """Index of the slice of ``layer`` shown in the viewer (0 for 2D layers)."""
    if layer.ndim < 3:
        return 0
    pos = layer.world_to_data(viewer.dims.point)
    z = int(round(float(pos[-3])))
    depth = int(image_array(layer).shape[-3])
    return min(max(z, 0), depth - 1)


def go_to_slice(viewer: Any, layer: Any, z: int) -> None:
    """Show slice ``z`` of ``layer``."""
    if layer.ndim < 3:
        return
    world = layer.data_to_world([z] + [0] * (layer.ndim - 1))
    axis = viewer.dims.ndim - layer.ndim
    viewer.dims.set_point(axis, float(world[0]))


def blank(shape: tuple[int, ...], dtype: Any) -> Any:
    """A zero array for an output layer; sparse in-memory zarr when it
    :func:`~napari_neuroedge.io.workstore.is_large` (chunks of :func:`~napari_neuroedge.io.chunks.paint_chunks`:
    a brush dab reads and writes a small chunk, not the slice)."""
    from ..io.chunks import paint_chunks
    from ..io.workstore import is_large

    if len(shape) < 3 or not is_large(shape, dtype):
        return np.zeros(shape, dtype)
    import zarr

    return zarr.zeros(shape, chunks=paint_chunks(shape), dtype=dtype)


def slices_from_paint(event: Any, ndim: int) -> set[int]:
    """Slice indices touched by a Labels ``paint`` event (its value is a list of history atoms)."""
    if ndim < 3:
        return {0}
    out: set[int] = set()
    for atom in getattr(event, "value", None) or []:
        key = getattr(atom, "slice_key", None)
        if key is not None:
            first = key[ndim - 3]
            if isinstance(first, slice):
                out.update(range(first.start or 0, first.stop if first.stop is not None else (first.start or 0) + 1))
            else:
                out.add(int(first))
            continue
        try:
            indices = atom[0]
            zs = np.asarray(indices[ndim - 3]).ravel()
            out.update(int(z) for z in np.unique(zs))
        except Exception:
            continue
    return out


def predicted_membranes(viewer: Any, membranes: Any, z: int) -> np.ndarray | None:
    """uint8 (y, x): the membranes Predict drew on slice ``z`` (boundary >= that prediction's threshold), or
    None if the slice was never predicted (or its boundary layer is gone)."""
    image = image_of(viewer, membranes)
    boundary = companion(viewer, image.name, "boundary") if image is not None else None
    led = ledger_of(membranes)
    if boundary is None or z not in led.predicted:
        return None
    return (slice_of(image_array(boundary), z) >= led.threshold_of(z)).astype(np.uint8)


def _current(viewer: Any, membranes: Any) -> Any:
    """The ledger's ``current``: slice -> the prediction shown now (None without a viewer)."""
    return None if viewer is None else (lambda z: predicted_membranes(viewer, membranes, z))


def reference_prediction(viewer: Any, membranes: Any, z: int) -> np.ndarray | None:
    """uint8 (y, x): the prediction the user corrected on slice ``z`` (:meth:`~.ledger.Ledger.reference_of`:
    kept when they first edited or marked it; else the current prediction), or None if there is none: never
    predicted, or its labels were drawn before any prediction (a scratch slice)."""
    return ledger_of(membranes).reference_of(z, _current(viewer, membranes))


def forget_slices(membranes: Any, slices: Any) -> None:
    """Predict replaced the user's labels of ``slices``: they are neither edited, corrected nor scratch."""
    zs = set(slices)
    ledger_of(membranes).forget(zs)
    drop_rows(membranes, zs)


def take_as_corrected(viewer: Any, membranes: Any, slices: Any, scratch_too: bool) -> set[int]:
    """Make ``slices`` training data (:meth:`~.ledger.Ledger.take_as_corrected`, the prediction shown now kept as
    the reference); returns the never-predicted (scratch) ones."""
    return ledger_of(membranes).take_as_corrected(slices, scratch_too, _current(viewer, membranes))


def mark_corrected(viewer: Any, membranes: Any, z: int, on: bool) -> None:
    """The user marked slice ``z`` corrected or not (:meth:`~.ledger.Ledger.mark_corrected`)."""
    ledger_of(membranes).mark_corrected(z, on, _current(viewer, membranes))


def record_paint(viewer: Any, membranes: Any, slices: set[int]) -> set[int]:
    """The user painted ``slices`` of a membrane layer (:meth:`~.ledger.Ledger.record_stroke`); returns those that
    were never predicted (not corrected: the user is warned)."""
    return ledger_of(membranes).record_stroke(slices, _current(viewer, membranes))


def has_role(layer: Any, role: str) -> bool:
    """Whether ``layer`` is the plugin's ``role`` layer: by its metadata, or by its name suffix when it has none."""
    own = info_role(layer)
    return own == role or (own == "" and str(layer.name).endswith(SUFFIXES[role]))


def is_membrane_layer(layer: Any) -> bool:
    """Whether ``layer`` is a membrane layer (the widgets' membrane choosers list these)."""
    return has_role(layer, "membranes")


# ---------------------------------------------------------------- per-slice rows, and what drops them
_ROWS: weakref.WeakKeyDictionary[Any, dict[int, Any]] = weakref.WeakKeyDictionary()


def cached_rows(membranes: Any) -> dict[int, Any]:
    """{slice: value} derived from a membrane layer's slice, its ignore paint and the prediction it corrects
    (``training_data`` keeps the summary rows here, shared by Export and Fine-tune); a paint or erase stroke on
    the layer or on its ignore layer, an undo / redo and a new prediction drop the slices they change."""
    return _ROWS.setdefault(membranes, {})


_ROW_VERSION: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def rows_version(membranes: Any) -> int:
    """How many times rows of ``membranes`` were dropped: a row computed elsewhere (another thread) is stored only
    if this did not change meanwhile (:func:`~.training_data.store_row`)."""
    return _ROW_VERSION.get(membranes, 0)


def drop_rows(membranes: Any, slices: Any = None) -> None:
    """Forget the cached rows of ``slices`` of ``membranes`` (all when None)."""
    _ROW_VERSION[membranes] = _ROW_VERSION.get(membranes, 0) + 1
    rows = _ROWS.get(membranes)
    if rows is None:
        return
    if slices is None:
        rows.clear()
    for z in slices or ():
        rows.pop(z, None)


# ---------------------------------------------------------------- paint tracking
_TRACKED: weakref.WeakSet[Any] = weakref.WeakSet()  # layers whose paint events are connected


def _membranes_of(viewer: Any, layer: Any) -> Any:
    """The membrane layer whose training data ``layer`` (a membrane or ignore layer) is, or None."""
    if has_role(layer, "membranes"):
        return layer
    image = image_of(viewer, layer) if viewer is not None else None
    return companion(viewer, image.name, "membranes") if image is not None else None


def attach_tracking(layer: Any, session: Any) -> None:
    """Track the user's paint/erase/fill (and undo / redo) on a membrane or ignore Labels layer.

    Membrane layer: an edited slice that was predicted becomes edited + corrected (its prediction kept as the
    reference); one that was never predicted becomes edited + scratch, NOT corrected (a warning says so): one
    stroke on an empty slice is not a corrected slice. ``session.slices_painted`` says which slices changed.
    Ignore layer (whoever made it): the training data of the painted slices changed. Either way the cached rows of
    the painted slices are dropped and ``session.corrections_changed`` is emitted with the membrane layer's name.
    """
    if layer in _TRACKED or not hasattr(getattr(layer, "events", None), "paint"):
        return
    _TRACKED.add(layer)
    check_labels_by_dtype(layer)  # a dab on a zarr-backed layer must not read a whole slice
    session_ref = weakref.ref(session)
    layer_ref = weakref.ref(layer)

    def changed(zs: set[int] | None) -> None:
        """``zs`` (None: unknown, e.g. an undo) of the layer changed."""
        lay, sess = layer_ref(), session_ref()
        if lay is None:
            return
        viewer = sess.viewer if sess is not None else None
        membranes = _membranes_of(viewer, lay)
        if membranes is None:
            return
        drop_rows(membranes, zs)
        if lay is membranes:
            if zs is not None:
                scratch = record_paint(viewer, lay, zs)
                if scratch:
                    from ._qt_utils import notify

                    notify(f"Slice {', '.join(map(str, sorted(scratch)))} was never predicted: not marked "
                           "corrected (see Correct).", "warning")
            if sess is not None:
                sess.slices_painted.emit(lay.name, sorted(ledger_of(lay).edited if zs is None else zs))
        if sess is not None:
            sess.corrections_changed.emit(membranes.name)

    layer.events.paint.connect(lambda event: changed(slices_from_paint(event, layer_ref().ndim)))
    for name in ("undo", "redo"):  # napari emits no event for them: wrap the layer's own methods
        if callable(getattr(type(layer), name, None)):
            def wrapped(*args: Any, _name: str = name, **kwargs: Any) -> Any:
                lay = layer_ref()  # (not the bound method: the layer would hold itself)
                out = getattr(type(lay), _name)(lay, *args, **kwargs)
                changed(None)
                return out

            setattr(layer, name, wrapped)


def track_viewer(viewer: Any, session: Any) -> None:
    """Track every membrane and ignore Labels layer of ``viewer`` (:func:`attach_tracking`): those there now,
    those added later, and a layer renamed into one (e.g. a new Labels layer renamed '<image> ignore')."""
    session_ref = weakref.ref(session)

    def consider(layer: Any) -> None:
        sess = session_ref()
        if sess is not None and (has_role(layer, "membranes") or has_role(layer, "ignore")):
            attach_tracking(layer, sess)

    def watch(layer: Any) -> None:
        consider(layer)
        layer_ref = weakref.ref(layer)
        layer.events.name.connect(lambda _event: (lambda lay: lay is not None and consider(lay))(layer_ref()))

    for layer in list(viewer.layers):
        watch(layer)
    viewer.layers.events.inserted.connect(lambda event: watch(event.value))


def membrane_colormap(extra: dict[int, Any] | None = None) -> Any:
    from napari.utils.colormaps import DirectLabelColormap

    colors = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: MEMBRANE_COLOR}
    colors.update(extra or {})
    return DirectLabelColormap(color_dict=colors)


def difference_map(label: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """uint8: 1 where the user added membrane (label 1, prediction 0), 2 where removed, else 0."""
    label, prediction = np.asarray(label) > 0, np.asarray(prediction) > 0
    out = np.zeros(label.shape, np.uint8)
    out[label & ~prediction] = 1
    out[~label & prediction] = 2
    return out
