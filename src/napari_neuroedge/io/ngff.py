"""OME-Zarr (NGFF) outputs and inputs: multiscale (z, y, x) or (y, x) images with their voxel size.

An output path ending in ``.ome.zarr`` becomes an NGFF group (the ome-zarr package's current format, 0.5 on
zarr v3): level ``0`` is the full-resolution array the caller writes into; at the end, levels 1, 2, ... are
each half the previous one in y/x (z is kept; EM stacks are anisotropic) until the next would be under
``min_size`` px, computed band by band so memory stays bounded. Labels are downsampled by nearest neighbour
(every second pixel; no new label values appear), probabilities by the 2x2 mean. Label outputs also carry
NGFF ``image-label`` metadata. Everything is written under a temporary name and renamed at the end; an existing
output is never overwritten.

A path ``IMAGE.ome.zarr/labels/NAME`` writes a label image inside ``IMAGE`` as the NGFF spec describes (listed in
``labels``' metadata, ``image-label.source`` pointing back at the image): ``IMAGE`` must exist or be written by the
same process (``neuroedge predict --prob P.ome.zarr --instances P.ome.zarr/labels/instances``); the label is
written beside it and moved in at the end, into the image's temporary folder when the image is still being
written, so both appear together.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import OutputExistsError, atomic_dir, check_free
from .chunks import chunks_for
from .units import nm_per_unit

MIN_LEVEL_SIZE = 64  # px: no pyramid level smaller than this in y or x
_BAND = 512  # rows of the previous level read at a time while building the pyramid (even; 8 MiB of 4096 px float32)
_WRITING: dict[str, Path] = {}  # resolved final path -> temporary folder of the NGFF images being written here


def label_of(path: str | Path) -> tuple[Path, str] | None:
    """(image path, label name) for ``IMAGE.ome.zarr/labels/NAME`` (a label image stored in that image), else None."""
    p = Path(str(path).rstrip("/"))
    if p.parent.name == "labels" and str(p.parent.parent).lower().endswith(".ome.zarr"):
        return p.parent.parent, p.name
    return None


def check_label_paths(outputs: list[str | Path | None]) -> None:
    """Fail before the work when a label path ``IMAGE.ome.zarr/labels/NAME`` among ``outputs`` has no image: one
    that exists or is itself among ``outputs``."""
    written = {Path(str(p).rstrip("/")).resolve() for p in outputs if p is not None}
    for p in outputs:
        inside = label_of(p) if p is not None else None
        if inside is not None and not inside[0].exists() and inside[0].resolve() not in written:
            raise ValueError(f"{p}: labels go inside an OME-Zarr image, and {inside[0]} is neither there nor "
                             f"written by this command (add e.g. --prob {inside[0]})")


def is_ome_zarr_path(path: str | Path) -> bool:
    """True for a path ending in ``.ome.zarr`` or a label inside one (``IMAGE.ome.zarr/labels/NAME``)."""
    return str(path).rstrip("/").lower().endswith(".ome.zarr") or label_of(path) is not None


def _axes(ndim: int) -> list[str]:
    if ndim not in (2, 3):
        raise ValueError(f"OME-Zarr output must be 2D (y, x) or 3D (z, y, x), got {ndim}D")
    return ["z", "y", "x"][-ndim:]


def _scale(voxel_size: tuple[float, ...] | None, ndim: int) -> tuple[list[float], dict[str, str]]:
    """Per-axis scale (nm where known, else 1) and the units of the axes that have one."""
    vs = list(voxel_size or ())[-ndim:]
    vs = [float("nan")] * (ndim - len(vs)) + vs
    scale, units = [], {}
    for ax, v in zip(_axes(ndim), vs):
        known = v == v and v > 0
        scale.append(float(v) if known else 1.0)
        if known:
            units[ax] = "nanometer"
    return scale, units


def _downsample(block: np.ndarray, mode: str) -> np.ndarray:
    """Halve the last two axes: ``mean`` of 2x2 (odd edges padded by their last row/column) or ``nearest``."""
    if mode == "nearest":
        return block[..., ::2, ::2]
    h, w = block.shape[-2:]
    pad = [(0, 0)] * (block.ndim - 2) + [(0, h % 2), (0, w % 2)]
    b = np.pad(block.astype(np.float32), pad, mode="edge")
    return ((b[..., ::2, ::2] + b[..., 1::2, ::2] + b[..., ::2, 1::2] + b[..., 1::2, 1::2]) / 4).astype(block.dtype)


def level_shapes(shape: tuple[int, ...], min_size: int = MIN_LEVEL_SIZE) -> list[tuple[int, ...]]:
    """The shapes of a pyramid's levels: ``shape``, then each half the previous one in y/x (rounded up; z kept)
    while the next is at least ``min_size`` px in y and x."""
    shapes = [tuple(shape)]
    while min((s + 1) // 2 for s in shapes[-1][-2:]) >= min_size:
        prev = shapes[-1]
        shapes.append((*prev[:-2], (prev[-2] + 1) // 2, (prev[-1] + 1) // 2))
    return shapes


def create_levels(group: Any, shapes: list[tuple[int, ...]], chunks: tuple[int, ...], dtype: Any) -> list[Any]:
    """Zero-filled arrays "1" .. ``len(shapes) - 1`` of ``group`` (``chunks`` cut to each level's shape)."""
    return [group.create_array(str(level), shape=shapes[level], chunks=tuple(min(c, s) for c, s in
                               zip(chunks, shapes[level])), dtype=np.dtype(dtype), fill_value=0)
            for level in range(1, len(shapes))]


def fill_levels(levels: list[Any], planes: Any = None, mode: str = "mean") -> None:
    """Compute levels 1.. of a pyramid (``levels[0]`` the full resolution) from the level above, band by band:
    every plane, or the z indices in ``planes`` (those just written). ``mode``: see :func:`_downsample`."""
    zs = [None] if levels[0].ndim == 2 else list(range(levels[0].shape[0]) if planes is None else planes)
    for src, dst in zip(levels[:-1], levels[1:]):
        for z in zs:
            for y0 in range(0, src.shape[-2], _BAND):
                key = (slice(y0, y0 + _BAND),) if z is None else (z, slice(y0, y0 + _BAND))
                small = _downsample(np.asarray(src[key]), mode)
                out = (slice(y0 // 2, y0 // 2 + small.shape[-2]),)
                dst[out if z is None else (z, *out)] = small


@contextlib.contextmanager
def open_ngff_output(path: str | Path, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...] | None = None,
                     voxel_size: tuple[float, ...] | None = None, downsample: str = "nearest",
                     label: bool = False, min_size: int = MIN_LEVEL_SIZE) -> Iterator[Any]:
    """Yield the full-resolution zarr array of a new NGFF image that becomes ``path`` when the block exits.

    ``downsample``: "nearest" (labels) or "mean" (probabilities) for the pyramid levels; ``label`` adds NGFF
    ``image-label`` metadata. On an exception the temporary group is deleted. Raises
    :class:`OutputExistsError` if ``path`` exists.
    """
    import zarr

    path = Path(path)
    check_free(path)
    if downsample not in ("nearest", "mean"):
        raise ValueError(f"downsample must be 'nearest' or 'mean', got {downsample!r}")
    chunks = chunks or chunks_for(shape)
    inside = label_of(path)
    key = str(path.resolve())
    commit = None if inside is None else _label_commit(path, *inside, tuple(shape))
    with atomic_dir(path, commit, beside=None if inside is None else inside[0].parent) as tmp:
        _WRITING[key] = tmp
        try:
            group = zarr.open_group(str(tmp), mode="w-")
            yield group.create_array("0", shape=shape, chunks=chunks, dtype=np.dtype(dtype), fill_value=0)
            shapes = level_shapes(tuple(shape), min_size)
            fill_levels([group["0"], *create_levels(group, shapes, chunks, dtype)], mode=downsample)
            write_metadata(group, len(shapes), len(shape), voxel_size, path.name.split(".")[0],
                           label=label or inside is not None, source="../../" if inside is not None else None)
        finally:
            _WRITING.pop(key, None)


def _label_commit(path: Path, image: Path, name: str, shape: tuple[int, ...]) -> Callable[[Path], None]:
    """The :func:`~napari_neuroedge.io.atomic.atomic_dir` commit of ``IMAGE/labels/NAME``: move the finished folder
    to ``labels/NAME`` of the image (or of its temporary folder while this process still writes it) and list it in
    ``labels``' metadata. The image must then be an NGFF 0.5 image of the same ``shape``."""

    def commit(tmp: Path) -> None:
        import zarr

        base = _WRITING.get(str(image.resolve()))  # still being written: its level 0 is there, metadata not yet
        ome = {} if base is not None or not image.exists() else dict(zarr.open_group(str(image), mode="r").attrs)
        if base is None and not ome.get("ome", {}).get("multiscales"):
            raise ValueError(f"{path}: {image} is not an OME-Zarr 0.5 image; write it in the same command "
                             f"(e.g. --prob {image}) or choose a label path inside an existing one")
        base = base or image
        level0 = ome["ome"]["multiscales"][0]["datasets"][0]["path"] if ome else "0"
        full = zarr.open_array(str(base / level0), mode="r")
        if tuple(full.shape) != tuple(shape):
            raise ValueError(f"{path}: shape {tuple(shape)} differs from the image's {tuple(full.shape)}")
        labels = zarr.open_group(str(base / "labels"), mode="a")
        dest = base / "labels" / name
        if dest.exists():
            raise OutputExistsError(path)
        os.rename(tmp, dest)
        meta = dict(labels.attrs.get("ome", {}))
        meta.update(version=ome.get("ome", {}).get("version", "0.5"), labels=[*meta.get("labels", []), name])
        labels.attrs["ome"] = meta

    return commit


def ngff_multiscales(attrs: Any) -> list[dict[str, Any]] | None:
    """The ``multiscales`` list of an NGFF group's attributes (0.5 under ``ome``, 0.4 at the top), or None."""
    attrs = dict(attrs)
    ms = attrs.get("ome", {}).get("multiscales") if isinstance(attrs.get("ome"), dict) else None
    return ms or attrs.get("multiscales")


def open_ngff_level0(group: Any) -> tuple[Any, tuple[float, ...] | None] | None:
    """(full-resolution zarr array, voxel size in nm for its spatial axes) of an NGFF group, or None if not NGFF."""
    ms = ngff_multiscales(group.attrs)
    if not ms:
        return None
    first = ms[0]
    ds = first["datasets"][0]
    data = group[ds["path"]]
    axes = first.get("axes") or [{"name": a} for a in "tczyx"[-data.ndim:]]
    scale = next((t["scale"] for t in ds.get("coordinateTransformations", []) if t.get("type") == "scale"), None)
    voxel: list[float] = []
    for i, ax in enumerate(axes):
        ax = ax if isinstance(ax, dict) else {"name": ax}
        if ax.get("name") in ("z", "y", "x"):
            factor = nm_per_unit(ax.get("unit", ""))
            voxel.append(float(scale[i]) * factor if scale is not None and factor else float("nan"))
    return data, (tuple(voxel) if voxel and not all(v != v for v in voxel) else None)


def write_metadata(group: Any, levels: int, ndim: int, voxel_size: tuple[float, ...] | None, name: str,
                   label: bool = False, source: str | None = None) -> None:
    """NGFF multiscales metadata for arrays "0" .. ``levels - 1`` of ``group`` (each level halving y/x): axes
    z/y/x (or y/x) with the voxel size in nm as the scale where known; ``label`` adds ``image-label`` (with
    ``source``, the relative path of the image it labels, for a label stored inside that image). Used by
    :func:`open_ngff_output` and the widget's working arrays."""
    from ome_zarr.writer import write_multiscales_metadata

    axes = _axes(ndim)
    scale, units = _scale(voxel_size, ndim)
    datasets = [{"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [
        s * (2**i if ax != "z" else 1) for s, ax in zip(scale, axes)]}]} for i in range(levels)]
    write_multiscales_metadata(group, datasets, axes=[{"name": a, "type": "space", **(
        {"unit": units[a]} if a in units else {})} for a in axes], name=name)
    if label:
        meta = dict(group.attrs.get("ome", {}))
        meta["image-label"] = {"version": meta.get("version", "0.5"),
                               **({"source": {"image": source}} if source else {})}
        group.attrs["ome"] = meta
