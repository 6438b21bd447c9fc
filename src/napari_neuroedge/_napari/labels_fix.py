"""A work-around for napari Labels layers backed by a chunked array (zarr, the work store's membranes).

napari 0.9's ``Labels._validate_label_in_range``, run at every brush dab, learns the layer's dtype through
``napari.layers.labels._labels_utils.get_dtype``, which indexes ``data[0]``: on a zarr-backed layer that reads and
decompresses a whole slice per dab (70 of the 85 ms a dab took on a 4096^2 slice). :func:`check_labels_by_dtype`
gives one layer a check that reads the dtype from the array's own ``dtype`` and raises the same error.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

__all__ = ["check_labels_by_dtype"]


def _label_error(dtype: np.dtype, value: int, low: int, high: int) -> Exception:
    try:
        from napari.layers.labels.labels import WrongSelectedLabelError

        return WrongSelectedLabelError(dtype=dtype, value=value, lower_bound=low, upper_bound=high)
    except Exception:  # another napari: its message, our type
        return ValueError(f"label {value} is outside the range of {dtype} ({low}..{high})")


def check_labels_by_dtype(layer: Any) -> None:
    """Make ``layer`` (a napari Labels layer) validate a brush's label against ``layer.data.dtype`` instead of
    reading ``data[0]`` (a no-op for a layer without that check)."""
    if not callable(getattr(layer, "_validate_label_in_range", None)):
        return
    layer_ref = weakref.ref(layer)  # (the layer holds the function: no cycle through a closure)

    def validate(label: int) -> None:
        lay = layer_ref()
        if lay is None:
            return
        data = lay.data[0] if getattr(lay, "multiscale", False) else lay.data
        dtype = np.dtype(getattr(data, "dtype", np.int64))
        low, high = (0, 1) if dtype == np.bool_ else (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
        if not low <= label <= high:
            raise _label_error(dtype, label, low, high)

    layer._validate_label_in_range = validate
