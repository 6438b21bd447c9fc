"""Landing a prediction in the viewer's layers, without Qt: a :class:`~.actions.PredictResult` becomes the
``<image> boundary / uncertainty / instances / membranes`` layers, in steps.

:func:`apply_steps` is a generator that yields after each layer it creates and each slice (or band of
:data:`BAND_ROWS` rows of a disk-backed slice) it writes, so the caller's event loop runs in between; the Predict
widget drives it from its job's done handler. Slices the correction ledger keeps on a re-prediction
(:meth:`~.ledger.Ledger.kept_on_repredict`) keep their membrane labels unless ``overwrite``. Disk-backed (lazy)
results are adopted as layer data when they cover the whole image, else copied band by band and deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from ..io.workstore import discard
from . import lazy_outputs, tracking
from .actions import PredictResult, update_difference

#: rows copied per event-loop turn into a disk-backed layer (8192 px wide float32: 32 MB, ~0.1 s)
BAND_ROWS = 1024


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
    """Delete a disk-backed output array no layer shows any more."""
    store = lazy_outputs.store_for(session)
    if store.owns(data) and not any(lay.data is data for lay in viewer.layers):
        store.discard(data)


def output_layer(viewer: Any, session: Any, image: Any, role: str, kind: str, dtype: Any, make: Any = None,
                 initial: Any = None, **kwargs: Any) -> tuple[Any, bool]:
    """The ``role`` layer of ``image`` (created when absent or unusable); returns (layer, created).

    A new layer (or an Image layer of the wrong shape) gets ``initial`` as data if given, else ``make(shape)``
    (default: :func:`tracking.blank`).
    """
    name = tracking.layer_name(image.name, role)
    shape = tuple(tracking.image_array(image).shape)
    make = make or (lambda shp: tracking.blank(shp, dtype))
    layer = viewer.layers[name] if name in viewer.layers else None
    wanted = {"image": "Image", "labels": "Labels"}[kind]
    if layer is not None and (type(layer).__name__ != wanted or tuple(layer.data.shape) != shape):
        if kind == "image" and type(layer).__name__ == wanted:
            old = layer.data
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


def copy_banded(src: Any, dst: Any, pairs: list[tuple[Any, Any]]) -> Any:
    """``dst[d] = src[s]`` for each (s, d) pair (None: the whole 2D array), a band of rows per step."""
    for s_idx, d_idx in pairs:
        rows = int(src.shape[-2])
        for y0 in range(0, rows, BAND_ROWS):
            y1 = min(rows, y0 + BAND_ROWS)
            if s_idx is None:
                dst[y0:y1] = src[y0:y1]
            else:
                dst[d_idx, y0:y1] = src[s_idx, y0:y1]
            yield


def covers_whole(result: PredictResult) -> bool:
    """Whether a lazy result covers the whole image (its staged arrays can become the layer data)."""
    return result.is_2d or list(result.slices) == list(range(int(result.shape[0])))


def put(viewer: Any, session: Any, image: Any, role: str, kind: str, result: PredictResult, arr: Any,
        skip: set[int] = frozenset(), **kwargs: Any) -> Any:
    """Write ``arr`` (the ``role`` output of ``result``) into its layer, keeping slices in ``skip``; a
    generator (a step per slice or band) returning (layer, created)."""
    dtype = np.dtype(arr.dtype)
    if not result.lazy:
        layer, created = output_layer(viewer, session, image, role, kind, dtype, **kwargs)
        yield
        yield from write_slices(layer, result, arr, skip)
        return layer, created
    store = lazy_outputs.store_for(session)

    def make(shape: tuple[int, ...]) -> Any:
        return store.create(shape, dtype, f"{image.name}-{role}", voxel_size_nm(image))

    if covers_whole(result):  # the staged array becomes the layer's data (no copy)
        layer, created = output_layer(viewer, session, image, role, kind, dtype, make=make, initial=arr, **kwargs)
        yield
        old = layer.data
        if old is not arr:
            if result.is_2d:
                keep = [(None, None)] if 0 in skip else []
            else:
                keep = [(z, z) for z in sorted(skip)]
            yield from copy_banded(old, arr, keep)  # the user's corrected slices stay
            layer.data = arr
            release(viewer, session, old)
        layer.refresh()
        return layer, created
    layer, created = output_layer(viewer, session, image, role, kind, dtype, make=make, **kwargs)
    yield
    yield from copy_banded(arr, layer.data, [(i, z) for i, z in enumerate(result.slices) if z not in skip])
    store.discard(arr)
    layer.refresh()
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
