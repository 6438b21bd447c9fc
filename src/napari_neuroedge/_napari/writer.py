"""npe2 writer: a Labels layer (e.g. corrected membranes) to an uncompressed TIFF, atomically, never overwriting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import _triton_guard  # noqa: F401


def _compact_dtype(data: np.ndarray) -> np.ndarray:
    """Labels in the smallest unsigned dtype that holds them (int64 TIFFs are poorly supported elsewhere)."""
    if data.dtype == bool:
        return data.astype(np.uint8)
    if data.size and data.min() < 0:
        return data.astype(np.int32) if data.min() >= np.iinfo(np.int32).min else data
    top = int(data.max()) if data.size else 0
    for dt in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dt).max:
            return data.astype(dt, copy=False)
    return data


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write labels ``data`` ((y, x) or (z, y, x)) to ``path`` (.tif/.tiff); refuses to overwrite an existing file.

    Raises :class:`napari_neuroedge.io.atomic.OutputExistsError` (a clear message) if ``path`` exists.
    """
    from ..io.atomic import OutputExistsError
    from ..io.stacks import write_array

    target = Path(path)
    if target.suffix.lower() not in (".tif", ".tiff"):
        target = target.with_suffix(".tif")
    if target.exists():
        raise OutputExistsError(target, "napari-neuroedge never overwrites files: choose a new name (nothing was "
                                "written)")
    arr = _compact_dtype(np.asarray(data))
    scale = (meta or {}).get("scale")
    voxel = tuple(float(s) for s in scale) if scale is not None and len(scale) == arr.ndim == 3 else None
    write_array(target, arr, voxel_size=voxel)
    return [str(target)]
