"""Export corrected slices into a training-set folder (the format: :mod:`napari_neuroedge.io.trainingset`).

Each item is one 2D slice: the raw image (its own dtype), the corrected membrane label (uint8, 1 = membrane),
optionally an ignore mask (uint8, 1 = labelled, 0 = ignore) and the model's prediction before correction
(uint8, so training can up-weight the pixels the user changed). Files are written atomically under new names;
an existing set is added to, never overwritten; the manifest is replaced atomically after the files exist.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write
from .trainingset import read_manifest, write_manifest


@dataclass
class ExportItem:
    """One corrected slice to export; ``meta`` holds provenance (source, slice, model, pixel_size, ...)."""

    image: np.ndarray
    label: np.ndarray
    mask: np.ndarray | None = None
    prediction: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "slice"


def _check(item: ExportItem, i: int) -> None:
    img, lab = np.asarray(item.image), np.asarray(item.label)
    where = f"item {i} ({item.meta.get('source', '?')} slice {item.meta.get('slice', '?')})"
    if img.ndim != 2:
        raise ValueError(f"{where}: image must be one 2D slice, got shape {img.shape}")
    if img.shape != lab.shape:
        raise ValueError(f"{where}: image {img.shape} and label {lab.shape} shapes differ; nothing was exported")
    for name in ("mask", "prediction"):
        arr = getattr(item, name)
        if arr is not None and np.asarray(arr).shape != img.shape:
            raise ValueError(f"{where}: {name} {np.asarray(arr).shape} and image {img.shape} shapes differ; "
                             "nothing was exported")


def export_slices(folder: str | Path, items: Sequence[ExportItem], prefix: str = "slice") -> list[dict[str, Any]]:
    """Add ``items`` to the training set in ``folder`` (created if needed); returns their manifest entries.

    Every item is checked before anything is written, so a bad item exports nothing.
    """
    import tifffile

    folder = Path(folder)
    for i, item in enumerate(items):
        _check(item, i)
    manifest = read_manifest(folder)
    taken = {e["name"] for e in manifest["items"]}
    for sub in ("images", "labels", "masks", "predictions"):
        taken |= {p.stem for p in (folder / sub).glob("*.tif")} if (folder / sub).exists() else set()
    entries = []
    for item in items:
        base = _safe(f"{prefix}_z{item.meta['slice']:04d}" if "slice" in item.meta else prefix)
        name, k = base, 1
        while name in taken:
            name, k = f"{base}-{k}", k + 1
        taken.add(name)
        entry: dict[str, Any] = {"name": name, "image": f"images/{name}.tif", "label": f"labels/{name}.tif",
                                 "mask": None, "prediction": None, "shape": list(np.asarray(item.image).shape),
                                 "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **item.meta}
        maps = {"image": np.asarray(item.image), "label": (np.asarray(item.label) > 0).astype(np.uint8)}
        if item.mask is not None:
            entry["mask"] = f"masks/{name}.tif"
            maps["mask"] = (np.asarray(item.mask) > 0).astype(np.uint8)
        if item.prediction is not None:
            entry["prediction"] = f"predictions/{name}.tif"
            maps["prediction"] = (np.asarray(item.prediction) > 0).astype(np.uint8)
        for key, arr in maps.items():
            atomic_write(folder / entry[key], lambda p, a=arr: tifffile.imwrite(p, a, photometric="minisblack"))
        entries.append(entry)
    manifest["items"].extend(entries)
    write_manifest(folder, manifest)
    return entries
