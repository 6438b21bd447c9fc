"""Training data in memory: labelled slices, read from arrays, an ISBI folder or a training-set folder, and
the per-pixel loss targets of a slice.

A :class:`LabelledSlice` is one normalised (H, W) float32 image with its uint8 membrane label (1 = membrane),
an optional uint8 mask (1 = labelled, 0 = ignore) and an optional uint8 map of pixels the user corrected.
Training-set folders (the format: :mod:`napari_neuroedge.io.trainingset`, written by
:mod:`napari_neuroedge.io.export`) are read with :func:`load_training_folder`; what the CLI names (any of these,
or a large image with its labels, through :mod:`.large_image`) is read by :func:`load_data`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import LossConfig, NormConfig
from ..inference.normalize import normalize_slice
from ..io.trainingset import MANIFEST, read_item, read_manifest
from .labelled import LabelledSlice

__all__ = ["LabelledSlice", "load_data", "load_isbi", "load_training_folder", "loss_targets", "read_manifest",
           "slices_from_arrays"]


def slices_from_arrays(images: np.ndarray, membranes: np.ndarray, norm: NormConfig,
                       indices: Sequence[int] | None = None, source: str = "") -> list[LabelledSlice]:
    """(z, y, x) raw images + (z, y, x) membrane labels (1 = membrane) -> LabelledSlices."""
    if images.shape != membranes.shape:
        raise ValueError(f"images {images.shape} and labels {membranes.shape} shapes differ")
    idx = range(images.shape[0]) if indices is None else indices
    return [LabelledSlice(normalize_slice(images[i], norm), (np.asarray(membranes[i]) > 0).astype(np.uint8),
                          meta={"source": source, "slice": int(i)}) for i in idx]


def load_isbi(root: str | Path, indices: Sequence[int], norm: NormConfig) -> list[LabelledSlice]:
    """ISBI 2012 training slices ``indices`` from ``root`` (train-volume.tif, train-labels.tif with 0 = membrane)."""
    import tifffile

    root = Path(root)
    vol = tifffile.imread(root / "train-volume.tif")
    lab = tifffile.imread(root / "train-labels.tif")
    return slices_from_arrays(vol, (lab == 0).astype(np.uint8), norm, indices, str(root))


def load_training_folder(folder: str | Path, norm: NormConfig) -> list[LabelledSlice]:
    """All items of a training-set folder written by :func:`napari_neuroedge.io.export.export_slices`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such training-set folder")
    items = read_manifest(folder)["items"]
    if not items:
        raise ValueError(f"{folder}: the training set is empty (no items in {MANIFEST})")
    out = []
    for entry in items:
        item = read_item(folder, entry)
        out.append(LabelledSlice(normalize_slice(item.image, norm), item.label, item.mask, item.corrected(),
                                 meta=dict(entry)))
    return out


def loss_targets(sl: LabelledSlice, loss: LossConfig, corrected_weight: float = 1.0) -> dict[str, np.ndarray]:
    """Per-pixel maps for one full slice (computed once, on the CPU): label, mask, and what ``loss`` needs."""
    from .targets import edge_band, skeleton_tube, unet_weight_map

    maps: dict[str, np.ndarray] = {"image": sl.image, "label": sl.label}
    maps["mask"] = sl.mask if sl.mask is not None else np.ones_like(sl.label)
    weight = None
    if loss.weighted_bce > 0:
        weight = unet_weight_map(sl.label, loss.w0, loss.sigma, mask=sl.mask)
    if sl.corrected is not None and corrected_weight != 1.0:
        weight = np.ones(sl.label.shape, np.float32) if weight is None else weight
        weight = np.where(sl.corrected > 0, weight * corrected_weight, weight).astype(np.float32)
    if weight is not None:
        maps["weight"] = weight.astype(np.float32)
    if loss.skeleton_recall > 0:
        maps["tube"] = skeleton_tube(sl.label)
    if loss.edge > 0:
        maps["band"] = edge_band(sl.label, loss.edge_band)
    return maps


def load_data(spec: str, slices: str | None, norm: Any, labels: str | None = None, windows: int = 64,
               window: int = 512, seed: int = 0) -> list[Any]:
    """ISBI-style folder (train-volume.tif + train-labels.tif, 0 = membrane), a training-set folder, or, with
    ``labels``, an image of any size: ``windows`` random windows of ``window`` px (the seed's overlapping grid
    plus corner-centred tiles), each read lazily, so a 10k x 10k slice is never loaded whole."""
    from ..slices import parse_slices

    path = Path(spec)
    if labels is not None:
        from ..io.stacks import open_stack
        from .large_image import LargeImageCrops

        img, lab = open_stack(path), open_stack(labels)
        zs = list(parse_slices(slices, img.shape[0])) if slices and len(img.shape) == 3 else None
        crops = LargeImageCrops(img.data, lab.data, tile=window, overlap=window // 4, norm=norm, slices=zs,
                                source=str(path))
        return crops.sample(windows, np.random.default_rng(seed))
    if (path / "train-volume.tif").exists() and (path / "train-labels.tif").exists():
        import tifffile

        depth = len(tifffile.TiffFile(path / "train-volume.tif").pages)
        return load_isbi(path, list(parse_slices(slices, depth)), norm)
    data = load_training_folder(path, norm)
    if slices:
        data = [data[i] for i in parse_slices(slices, len(data))]
    return data
