"""The training-set folder format: ``images/``, ``labels/``, ``masks/``, ``predictions/`` and ``manifest.json``.

Each item is one 2D slice stored as TIFF files: the raw image (its own dtype), the corrected membrane label
(uint8, 1 = membrane), optionally an ignore mask (uint8, 1 = labelled, 0 = ignore) and the model's prediction
before correction (uint8). ``manifest.json`` lists the items with their file names and provenance. Written by
:mod:`napari_neuroedge.io.export`, read for training (:mod:`napari_neuroedge.training.dataset`) and for the
widgets' summaries; the format lives here, below both, so neither imports the other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import replace_atomically

MANIFEST = "manifest.json"
TRAININGSET_FORMAT = "napari-neuroedge-trainingset"


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of a training-set folder (an empty one if the folder has none yet)."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return {"format": TRAININGSET_FORMAT, "version": 1, "items": []}
    data = json.loads(path.read_text())
    if data.get("format") != TRAININGSET_FORMAT:
        raise ValueError(f"{path}: not a napari-neuroedge training-set manifest")
    return data


def write_manifest(folder: str | Path, manifest: dict[str, Any]) -> Path:
    """Replace the folder's manifest atomically (readers see the old or the new list, never half of one)."""
    text = json.dumps(manifest, indent=2, default=str)
    return replace_atomically(Path(folder) / MANIFEST, lambda p: p.write_text(text))


@dataclass
class StoredItem:
    """One item as stored: its manifest ``entry`` and arrays (y, x); ``label`` uint8 1 = membrane, ``mask``
    as stored (uint8 1 = labelled) or None, ``prediction`` uint8 1 = membrane or None, ``image`` None unless
    read."""

    entry: dict[str, Any]
    label: np.ndarray
    mask: np.ndarray | None = None
    prediction: np.ndarray | None = None
    image: np.ndarray | None = None

    def corrected(self) -> np.ndarray | None:
        """uint8 map of the pixels the user changed (label differs from the prediction), None without one."""
        return None if self.prediction is None else (self.prediction != self.label).astype(np.uint8)


def read_item(folder: str | Path, entry: dict[str, Any], image: bool = True) -> StoredItem:
    """The arrays of one manifest ``entry`` of ``folder`` (the raw image only when ``image``)."""
    import tifffile

    folder = Path(folder)
    label = (tifffile.imread(folder / entry["label"]) > 0).astype(np.uint8)
    mask = tifffile.imread(folder / entry["mask"]).astype(np.uint8) if entry.get("mask") else None
    pred = (tifffile.imread(folder / entry["prediction"]) > 0).astype(np.uint8) if entry.get("prediction") else None
    raw = tifffile.imread(folder / entry["image"]) if image else None
    return StoredItem(entry, label, mask, pred, raw)
