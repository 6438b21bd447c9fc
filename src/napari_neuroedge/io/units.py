"""Physical units of voxel sizes: every spelling a file (OME-XML, ImageJ, NGFF) or a napari layer uses, in nm.

Below the readers and writers that need it (:mod:`.stacks` for TIFF metadata, :mod:`.ngff` for NGFF axes)."""

from __future__ import annotations

from typing import Any

#: nm per unit, for every spelling a file (OME-XML, ImageJ, NGFF) or a napari layer uses
NM_PER_UNIT = {"nm": 1.0, "nanometer": 1.0, "um": 1e3, "\u00b5m": 1e3, "\u03bcm": 1e3, "\\u00B5m": 1e3, "micron": 1e3,
               "micrometer": 1e3, "mm": 1e6, "millimeter": 1e6, "angstrom": 0.1, "\u00c5": 0.1}


def nm_per_unit(unit: Any, default: float | None = None) -> float | None:
    """How many nm one ``unit`` is (:data:`NM_PER_UNIT`; ``default`` for anything else, e.g. "pixel")."""
    return NM_PER_UNIT.get(str(unit), default)
