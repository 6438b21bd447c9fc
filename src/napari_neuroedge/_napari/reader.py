"""npe2 reader: EM stacks from .tif/.tiff (multi-page, OME, BigTIFF), folders of 2D slices and .zarr arrays.

The data stays lazy (memory-mapped TIFF, zarr, or a folder read slice by slice) so large stacks open at once.
:func:`napari_get_reader` returns None (never raises) for anything :func:`napari_neuroedge.io.stacks.open_stack` cannot
open, so napari can try other readers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import _triton_guard  # noqa: F401

LayerData = tuple[Any, dict[str, Any], str]
READABLE_SUFFIXES = (".tif", ".tiff", ".zarr")


def _single_path(path: Any) -> str | None:
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, (str, Path)):
        return None
    return str(path)


def napari_get_reader(path: Any) -> Callable[[Any], list[LayerData]] | None:
    """A reader function for ``path`` if it is an EM stack this plugin can open, else None."""
    try:
        single = _single_path(path)
        if single is None:
            return None
        p = Path(single)
        if not (p.suffix.lower() in READABLE_SUFFIXES or p.is_dir()):
            return None
        from ..io.stacks import open_stack

        stack = open_stack(p)  # lazy: only metadata and the first slice are read
    except Exception:  # never raise: another reader may handle it
        return None

    def read(_path: Any = None) -> list[LayerData]:
        return [stack_layer_data(stack)]

    return read


def _layers_have_units() -> bool:
    """Whether this napari's layers take ``units`` (napari 0.6 and later)."""
    import inspect

    from napari.layers import Image

    return "units" in inspect.signature(Image.__init__).parameters


def stack_layer_data(stack: Any) -> LayerData:
    """napari layer data (image) for an :class:`napari_neuroedge.io.stacks.EMStack`, with its voxel size as scale."""
    ndim = len(stack.shape)
    meta: dict[str, Any] = {"name": Path(stack.source).name.split(".")[0] or "EM stack",
                            "metadata": {"source": stack.source, "voxel_size": stack.voxel_size}}
    if stack.voxel_size is not None:
        scale = [float(v) if v == v and v > 0 else 1.0 for v in stack.voxel_size][-ndim:]  # NaN -> 1
        if len(scale) == ndim:
            meta["scale"] = scale
            if _layers_have_units():  # so the layer itself says what its scale means (export reads it)
                meta["units"] = ["nm"] * ndim
    return stack.data, meta, "image"
