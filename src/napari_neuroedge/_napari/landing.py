"""Landing a prediction in the viewer's layers, without Qt: a :class:`~.actions.PredictResult` becomes the
``<image> boundary / uncertainty / instances / membranes`` layers, in steps.

:func:`apply_steps` is a generator that yields after each layer it creates and each slice it writes, so the
caller's event loop runs in between; the Predict widget drives it from its job's done handler. Slices the correction
ledger keeps on a re-prediction (:meth:`~.ledger.Ledger.kept_on_repredict`) keep their membrane labels unless
``overwrite``. Disk-backed (lazy) results are adopted as layer data when they cover the whole image, else copied
into the layer's array and deleted; that copy (and the pyramid levels of the probability layers, which are
multiscale so napari reads only the level it shows) runs in a background thread (:func:`off_thread`) while the
event loop keeps running, and a layer is added, or refreshed, once its data is complete: napari reads a slice of
it once.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np

from ..io.ngff import fill_levels
from ..io.workstore import discard
from . import lazy_outputs, tracking
from .actions import PredictResult, update_difference

#: rows copied at a time into a disk-backed layer (in the landing thread)
BAND_ROWS = 1024
#: seconds the GUI thread waits for the landing thread per event-loop turn before letting the loop run again
POLL_S = 0.02
_POOL: ThreadPoolExecutor | None = None


def off_thread(fn: Callable[..., Any], *args: Any) -> Generator[None, None, Any]:
    """Run ``fn(*args)`` in the landing thread; a generator that yields every :data:`POLL_S` s until it has ended
    (so the event loop runs meanwhile), returning its value or raising its error."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(1, thread_name_prefix="neuroedge-landing")
    future = _POOL.submit(fn, *args)
    while True:
        try:
            return future.result(timeout=POLL_S)
        except FutureTimeout:
            yield


def voxel_size_nm(layer: Any) -> tuple[float, ...] | None:
    """The layer's voxel size in nm per axis, NaN where nothing states it (None: no axis): the voxel size the
    NeuroEdge reader stored (its NaN stays NaN: the reader shows it as scale 1), else the layer's scale on the
    axes whose unit is a length (:func:`~napari_neuroedge.io.stacks.nm_per_unit`). The scale of the on-disk OME-Zarr
    outputs."""
    from ..io.stacks import nm_per_unit

    nan = float("nan")
    meta = layer.metadata if isinstance(layer.metadata, dict) else {}
    stored = meta.get("voxel_size")
    if stored is not None:
        out = [float(v) if float(v) > 0 else nan for v in list(stored)[-layer.ndim:]]
        out = [nan] * (layer.ndim - len(out)) + out
    else:
        units = [str(u) for u in (getattr(layer, "units", None) or ())]
        factors = [nm_per_unit(u) for u in units] if len(units) == layer.ndim else [None] * layer.ndim
        out = [float(s) * f if f else nan for s, f in zip(layer.scale, factors)]
    return tuple(out) if any(v == v for v in out) else None


def release(viewer: Any, session: Any, data: Any) -> None:
    """Delete a disk-backed output array (level 0 of its pyramid) no layer shows any more."""
    store = lazy_outputs.store_for(session)
    if store.owns(data) and not any(tracking.image_array(lay) is data for lay in viewer.layers):
        store.discard(data)


def _layer_data(levels: list[Any]) -> Any:
    """Layer data for a pyramid's levels: the list (a multiscale layer) when there are several, else level 0."""
    return list(levels) if len(levels) > 1 else levels[0]


def output_layer(viewer: Any, session: Any, image: Any, role: str, kind: str, dtype: Any, make: Any = None,
                 initial: Any = None, **kwargs: Any) -> tuple[Any, bool]:
    """The ``role`` layer of ``image`` (created when absent or unusable); returns (layer, created).

    A new layer (or an Image layer of the wrong shape) gets ``initial`` as data if given, else ``make(shape)``
    (default: :func:`tracking.blank`); a list of arrays is a pyramid (a multiscale layer). An Image layer whose
    multiscale-ness differs from ``initial``'s is replaced (napari cannot change it).
    """
    name = tracking.layer_name(image.name, role)
    shape = tuple(tracking.image_array(image).shape)
    make = make or (lambda shp: tracking.blank(shp, dtype))
    layer = viewer.layers[name] if name in viewer.layers else None
    wanted = {"image": "Image", "labels": "Labels"}[kind]
    multiscale = isinstance(initial, list)
    if multiscale:
        kwargs["multiscale"] = True
    if (layer is not None and kind == "image" and type(layer).__name__ == wanted and initial is not None
            and bool(getattr(layer, "multiscale", False)) != multiscale):
        old = tracking.image_array(layer)
        viewer.layers.remove(layer)
        release(viewer, session, old)
        layer = None
    if layer is not None and (type(layer).__name__ != wanted or tuple(tracking.image_array(layer).shape) != shape):
        if kind == "image" and type(layer).__name__ == wanted:
            old = tracking.image_array(layer)
            layer.data = initial if initial is not None else make(shape)
            release(viewer, session, old)
        else:  # never destroy user data: move the old layer aside
            old, k = f"{name} (old)", 2
            while old in viewer.layers:
                old, k = f"{name} (old {k})", k + 1
            layer.name = old
            layer = None
    created = layer is None
    if created:
        data = initial if initial is not None else make(shape)
        add = viewer.add_image if kind == "image" else viewer.add_labels
        layer = add(data, name=name, scale=image.scale, translate=image.translate,
                    metadata={tracking.KEY: {"role": role, "image": image.name}}, **kwargs)
    else:
        layer.scale = image.scale
        layer.translate = image.translate
    meta = tracking.info(layer)
    meta["role"], meta["image"] = role, image.name
    return layer, created


def write_slices(layer: Any, result: PredictResult, arr: np.ndarray, skip: set[int] = frozenset()) -> Any:
    """Write ``arr`` into the layer's slices, yielding after each slice (a generator)."""
    if result.is_2d:
        if 0 not in skip:
            layer.data[...] = arr[0]
    else:
        for i, z in enumerate(result.slices):
            if z not in skip:
                layer.data[z] = arr[i]
                yield
    layer.refresh()


def copy_slices(src: Any, levels: list[Any], pairs: list[tuple[Any, Any]]) -> None:
    """``levels[0][d] = src[s]`` for each (s, d) pair (None: the whole 2D array), :data:`BAND_ROWS` rows at a time,
    then the pyramid levels of the planes written (the landing thread runs this)."""
    dst = levels[0]
    for s_idx, d_idx in pairs:
        rows = int(src.shape[-2])
        for y0 in range(0, rows, BAND_ROWS):
            y1 = min(rows, y0 + BAND_ROWS)
            if s_idx is None:
                dst[y0:y1] = src[y0:y1]
            else:
                dst[d_idx, y0:y1] = src[s_idx, y0:y1]
    if len(levels) > 1 and pairs:
        fill_levels(levels, None if pairs[0][1] is None else [d for _, d in pairs], mode="mean")


def covers_whole(result: PredictResult) -> bool:
    """Whether a lazy result covers the whole image (its staged arrays can become the layer data)."""
    return result.is_2d or list(result.slices) == list(range(int(result.shape[0])))


def _existing(viewer: Any, image: Any, role: str, kind: str, multiscale: bool) -> Any:
    """The ``role`` layer of ``image`` if its data can be written in place (right type, shape, multiscale-ness)."""
    name = tracking.layer_name(image.name, role)
    layer = viewer.layers[name] if name in viewer.layers else None
    wanted = {"image": "Image", "labels": "Labels"}[kind]
    if (layer is None or type(layer).__name__ != wanted
            or tuple(tracking.image_array(layer).shape) != tuple(tracking.image_array(image).shape)
            or bool(getattr(layer, "multiscale", False)) != multiscale):
        return None
    return layer


def _levels_of_layer(session: Any, layer: Any) -> list[Any]:
    if getattr(layer, "multiscale", False):
        return [layer.data[i] for i in range(len(layer.data))]
    return lazy_outputs.store_for(session).levels_of(layer.data)


def put(viewer: Any, session: Any, image: Any, role: str, kind: str, result: PredictResult, arr: Any,
        skip: set[int] = frozenset(), **kwargs: Any) -> Any:
    """Write ``arr`` (the ``role`` output of ``result``) into its layer, keeping slices in ``skip``; a
    generator (a step per slice, or per poll of the landing thread) returning (layer, created)."""
    dtype = np.dtype(arr.dtype)
    if not result.lazy:
        layer, created = output_layer(viewer, session, image, role, kind, dtype, **kwargs)
        yield
        yield from write_slices(layer, result, arr, skip)
        return layer, created
    store = lazy_outputs.store_for(session)
    if covers_whole(result):  # the staged arrays become the layer's data (no copy)
        levels = store.levels_of(arr)
        existing = _existing(viewer, image, role, kind, len(levels) > 1)
        if existing is not None and tracking.image_array(existing) is not arr:
            keep = ([(None, None)] if 0 in skip else []) if result.is_2d else [(z, z) for z in sorted(skip)]
            if keep:  # the user's corrected slices stay
                yield from off_thread(copy_slices, tracking.image_array(existing), levels, keep)
        return (yield from show(viewer, session, image, role, kind, dtype, levels, **kwargs))
    existing = _existing(viewer, image, role, kind, kind == "image")
    if existing is None:
        existing = _existing(viewer, image, role, kind, False)  # one made before (no pyramid): written as it is
    if existing is not None:
        levels = _levels_of_layer(session, existing)
    else:  # complete the data before the layer shows it: napari reads it once
        shape = tuple(tracking.image_array(image).shape)
        levels = store.levels_of(store.create(shape, dtype, f"{image.name}-{role}", voxel_size_nm(image),
                                              pyramid=kind == "image"))
    yield
    pairs = [(i, z) for i, z in enumerate(result.slices) if z not in skip]
    yield from off_thread(copy_slices, arr, levels, pairs)
    yield from off_thread(store.discard, arr)  # (deleting its folder takes a while too)
    if existing is not None:
        layer, created = output_layer(viewer, session, image, role, kind, dtype, **kwargs)
        layer.refresh()
        return layer, created
    return (yield from show(viewer, session, image, role, kind, dtype, levels, **kwargs))


def show(viewer: Any, session: Any, image: Any, role: str, kind: str, dtype: Any, levels: list[Any],
         **kwargs: Any) -> Generator[None, None, tuple[Any, bool]]:
    """Make ``levels`` (a pyramid, or [level 0]) the data of the ``role`` layer (created if absent); a generator
    returning (layer, created).

    A new Labels layer of disk-backed data is added hidden over a zero placeholder, gets its data at the next step
    and is shown at the one after: napari then reads a slice of it once, at the last step, instead of five times
    in one step (the layer's init and post-init, the viewer's slicing and the layer controls' dtype look-ups each
    read ``data[0]``: 0.3 s for a 4096^2 slice on disk, before the window repaints it)."""
    data = _layer_data(levels)
    placeholder = kind == "labels" and not isinstance(data, (list, np.ndarray))
    visible = kwargs.pop("visible", True)
    shape = tuple(tracking.image_array(image).shape)
    initial = np.broadcast_to(np.zeros((), dtype), shape) if placeholder else data
    layer, created = output_layer(viewer, session, image, role, kind, dtype, initial=initial,
                                  visible=visible and not placeholder, **kwargs)
    hidden = created and placeholder
    if hidden:
        yield
    old = tracking.image_array(layer)
    if old is not levels[0]:
        layer.data = data
        release(viewer, session, old)
    if hidden:
        yield
        layer.visible = visible
    return layer, created


def discard_result(session: Any, result: PredictResult) -> None:
    """Delete a lazy result's staged arrays (a result that lands nowhere)."""
    if result.lazy:
        discard(lazy_outputs.store_for(session), result.arrays())


def apply_steps(viewer: Any, session: Any, result: PredictResult, overwrite: bool,
                warn: Callable[[str], None]) -> Generator[None, None, list[int]]:
    """Write a prediction into the output layers, a generator yielding after each layer created and each slice
    (or band of rows of a disk-backed slice) written; returns the edited slices whose labels were kept.

    ``overwrite``: predict over the slices the user edited or marked corrected too. ``warn(message)`` tells the
    user why a result was discarded (its image was removed or changed shape)."""
    if result.image not in viewer.layers:
        warn(f"The image layer '{result.image}' was removed; its prediction was discarded.")
        discard_result(session, result)
        return []
    image = viewer.layers[result.image]
    if tuple(tracking.image_array(image).shape) != result.shape:
        warn(f"'{result.image}' changed shape during the prediction; it was discarded. Predict again.")
        discard_result(session, result)
        return []
    boundary, added = yield from put(viewer, session, image, "boundary", "image", result, result.prob,
                                     colormap="magma", contrast_limits=(0.0, 1.0), blending="additive", opacity=0.6)
    if result.variance is not None:
        unc, created = yield from put(viewer, session, image, "uncertainty", "image", result, result.variance,
                                      colormap="viridis", contrast_limits=(0.0, 0.1), blending="additive",
                                      visible=False)
        added |= created
    if result.instances is not None:
        added |= (yield from put(viewer, session, image, "instances", "labels", result, result.instances,
                                 opacity=0.35))[1]
    name = tracking.layer_name(image.name, "membranes")
    existing = viewer.layers[name] if name in viewer.layers else None
    reused = (existing is not None and type(existing).__name__ == "Labels"
              and tuple(existing.data.shape) == result.shape)  # else a fresh layer holds nothing of the user's
    keep: set[int] = set()
    if reused and not overwrite:  # the user's labels: edited or marked corrected
        keep = tracking.ledger_of(existing).kept_on_repredict(result.slices)
    membranes, created = yield from put(viewer, session, image, "membranes", "labels", result, result.membranes,
                                        keep, colormap=tracking.membrane_colormap(), opacity=0.7)
    if overwrite:
        tracking.forget_slices(membranes, result.slices)
    # a kept slice keeps the provenance of the prediction it corrects
    tracking.ledger_of(membranes).mark_predicted(result.slices, result.model, result.threshold, keep,
                                                 uncertainty=result.variance is not None)
    tracking.drop_rows(membranes)  # a prediction is rare: the summary rows are read again once
    tracking.attach_tracking(membranes, session)
    if created:
        membranes.brush_size = 2
        membranes.selected_label = 1
    if created or added:  # napari selects a layer it adds: the next brush stroke must paint membranes
        viewer.layers.selection.active = membranes
    diff = tracking.companion(viewer, image.name, "difference")
    if diff is not None:
        update_difference(viewer, membranes, result.slices)
    session.corrections_changed.emit(membranes.name)
    return sorted(keep)


def run_to_end(steps: Generator[Any, Any, Any]) -> Any:
    """Drive a step generator to its end at once; returns its value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value
