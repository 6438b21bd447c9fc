"""Per-layer bookkeeping and the plugin's output layers.

Layer names: for an image layer ``<image>`` the plugin owns ``<image> boundary`` (Image, float32 probability),
``<image> membranes`` (Labels uint8, 1 = membrane), ``<image> instances`` (Labels uint32),
``<image> uncertainty`` (Image, TTA variance), ``<image> difference`` (Labels: 1 = membrane the user added,
2 = membrane the user removed) and reads ``<image> ignore`` (Labels: painted = not labelled).

The membrane layer's ``metadata["neuroedge"]`` holds: ``image`` (image layer name), ``edited`` (slices painted
by the user), ``corrected`` (slices the user marks as done), ``predicted`` (slices with a prediction),
``slice_model`` (slice -> model provenance), ``threshold``. Slices are ints (0 for a 2D image).
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

KEY = "neuroedge"
SUFFIXES = {"boundary": " boundary", "membranes": " membranes", "instances": " instances",
            "uncertainty": " uncertainty", "difference": " difference", "ignore": " ignore"}
MEMBRANE_COLOR = (0.0, 1.0, 1.0, 1.0)  # cyan
LARGE_BYTES = 1 << 30  # outputs bigger than this are sparse in-memory zarr arrays instead of numpy


def layer_name(image_name: str, role: str) -> str:
    return image_name + SUFFIXES[role]


def info(layer: Any) -> dict[str, Any]:
    """The plugin's bookkeeping dict in ``layer.metadata`` (created with defaults on first use)."""
    meta = layer.metadata.setdefault(KEY, {})
    for name in ("edited", "corrected", "predicted", "exported"):
        meta.setdefault(name, set())
    meta.setdefault("slice_model", {})
    meta.setdefault("threshold", 0.5)
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
    """A zero array for an output layer; sparse in-memory zarr (one chunk per slice) when very large."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes <= LARGE_BYTES or len(shape) < 3:
        return np.zeros(shape, dtype)
    import zarr

    return zarr.zeros(shape, chunks=(1, *shape[-2:]), dtype=dtype)


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


_TRACKED: weakref.WeakSet[Any] = weakref.WeakSet()  # layers whose paint events are connected


def attach_tracking(layer: Any, session: Any) -> None:
    """Track the user's paint/erase/fill on a membrane layer: edited slices become edited + corrected."""
    if layer in _TRACKED:
        return
    _TRACKED.add(layer)
    session_ref = weakref.ref(session)
    layer_ref = weakref.ref(layer)

    def on_paint(event: Any) -> None:
        lay = layer_ref()
        if lay is None:
            return
        zs = slices_from_paint(event, lay.ndim)
        m = info(lay)
        new = zs - m["edited"]
        m["edited"] |= zs
        m["corrected"] |= new
        sess = session_ref()
        if sess is not None:
            sess.corrections_changed.emit(lay.name)

    layer.events.paint.connect(on_paint)


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
