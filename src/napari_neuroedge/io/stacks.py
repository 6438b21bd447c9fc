"""Reading EM stacks and writing results, lazily and atomically.

Inputs: TIFF (multi-page, BigTIFF, OME-TIFF; memory-mapped when the file is uncompressed and contiguous,
otherwise read lazily through tifffile's zarr store), folders of 2D slices (tif/png) and zarr arrays. Every
reader returns an :class:`EMStack`: an array-like ``data`` of shape (y, x) or (z, y, x) plus the voxel size
where the file states it. Outputs are written into a temporary file or folder and published atomically under
their final name at the end; an existing output is never overwritten.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_dir, atomic_path, check_free
from .chunks import chunks_for
from .units import nm_per_unit

SUPPORTED_DTYPES = ("uint8", "uint16", "float32", "float64")
SLICE_SUFFIXES = (".tif", ".tiff", ".png")


class InputError(ValueError):
    """The input cannot be used; the message names the file and what was expected."""


@dataclass
class EMStack:
    """An EM image or stack: ``data`` is array-like (y, x) or (z, y, x); ``voxel_size`` in nm as (z, y, x) or None."""

    data: Any
    voxel_size: tuple[float, ...] | None
    source: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)


def check_em_array(data: Any, name: str = "input") -> None:
    """Raise :class:`InputError` unless ``data`` is a non-empty grayscale 2D (y, x) or 3D (z, y, x) array."""
    shape = tuple(int(s) for s in getattr(data, "shape", ()))
    dtype = np.dtype(getattr(data, "dtype", np.float64))
    if len(shape) == 0:
        raise InputError(f"{name}: not an image (no shape)")
    if any(s == 0 for s in shape):
        raise InputError(f"{name}: empty image of shape {shape}; expected at least one 2D slice")
    if len(shape) in (3, 4) and shape[-1] in (3, 4) and min(shape[-3:-1]) > 4:
        raise InputError(f"{name}: got {shape} RGB/RGBA data; convert it to grayscale (one channel) first")
    if len(shape) not in (2, 3):
        raise InputError(f"{name}: got {len(shape)}D data of shape {shape}; expected a 2D image (y, x) or a 3D "
                         "stack (z, y, x) with one channel")
    if dtype.name not in SUPPORTED_DTYPES:
        raise InputError(f"{name}: dtype {dtype.name} is not supported; expected one of {', '.join(SUPPORTED_DTYPES)}")
    if min(shape[-2:]) < 2:
        raise InputError(f"{name}: slices of {shape[-2:]} px are too small; expected at least 2x2")


def open_stack(path: str | Path) -> EMStack:
    """Open a TIFF file, a folder of 2D slices or a zarr array as an :class:`EMStack`, lazily where possible."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix == ".zarr" or (path.is_dir() and ((path / ".zarray").exists() or (path / "zarr.json").exists())):
        stack = _open_zarr(path)
    elif path.is_dir():
        stack = _open_slice_folder(path)
    elif suffix in (".tif", ".tiff"):
        stack = _open_tiff(path)
    elif suffix == ".png":
        stack = EMStack(_imread_2d(path), None, str(path))
    elif suffix == ".npy":
        stack = EMStack(np.load(path, mmap_mode="r"), None, str(path))
    else:
        raise InputError(f"{path}: unsupported file type {suffix!r}; expected .tif/.tiff, .png, .npy, .zarr or a "
                         "folder of slices")
    check_em_array(stack.data, str(path))
    return stack


def _open_tiff(path: Path) -> EMStack:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            voxel = _tiff_voxel_size(tif)
            shape, axes = series.shape, series.axes
            compressed = any(p.compression != 1 for p in series.pages[:1] if p is not None)
            size = int(np.prod(shape)) * np.dtype(series.dtype).itemsize
        if "S" in axes and shape[axes.index("S")] in (3, 4) and not axes.startswith("S"):
            raise InputError(f"{path}: got {shape} RGB data (axes {axes}); convert it to grayscale first")
        # planar "RGB" (axes SYX) is how older tifffile wrote any (3|4, y, x) array: read it as a z-stack
        try:
            data: Any = tifffile.memmap(path, mode="r")
        except (ValueError, OSError):
            if compressed and size > 256 * 2**20:
                import zarr

                data = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
            else:
                data = tifffile.imread(path)
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types on corrupt files
        raise InputError(f"{path}: cannot read as TIFF ({type(exc).__name__}: {exc})") from exc
    data = _squeeze_leading(data)
    return EMStack(data, voxel, str(path))


def _squeeze_leading(data: Any) -> Any:
    while getattr(data, "ndim", 0) > 3 and data.shape[0] == 1:
        data = data[0]
    return data


def _tiff_voxel_size(tif: Any) -> tuple[float, ...] | None:
    """Voxel size in nm from OME or ImageJ metadata, when the file states it."""
    try:
        if tif.is_ome and tif.ome_metadata:
            import xml.etree.ElementTree as ET

            root = ET.fromstring(tif.ome_metadata)
            pixels = next(el for el in root.iter() if el.tag.endswith("Pixels"))
            out = []
            for ax in ("Z", "Y", "X"):
                val = pixels.get(f"PhysicalSize{ax}")
                unit = pixels.get(f"PhysicalSize{ax}Unit", "µm")
                out.append(float(val) * nm_per_unit(unit, 1e3) if val else float("nan"))
            if not all(np.isnan(out)):
                return tuple(out)
        ij = tif.imagej_metadata
        page = tif.pages[0]
        if ij is not None and "XResolution" in page.tags:
            num, den = page.tags["XResolution"].value
            unit = str(ij.get("unit", "micron"))
            factor = nm_per_unit(unit, 1e3)
            xy = den / num * factor if num else float("nan")
            z = float(ij.get("spacing", float("nan"))) * factor
            return (z, xy, xy)
    except Exception:  # metadata is optional; never fail a read on it
        return None
    return None


def _imread_2d(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".png":
            from skimage.io import imread

            return np.asarray(imread(path))
        import tifffile

        return np.asarray(tifffile.imread(path))
    except Exception as exc:
        raise InputError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc


class SliceFolder:
    """A folder of same-shaped 2D slices seen as a lazy (z, y, x) array; slices are read on indexing."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)
        first = _imread_2d(self.files[0])
        self.shape = (len(self.files), *first.shape)
        self.dtype = first.dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self[:]
        return arr.astype(dtype) if dtype is not None else arr

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        zkey, rest = key[0], key[1:]
        zs = range(self.shape[0])[zkey] if isinstance(zkey, slice) else None
        if zs is None:
            return self._slice(int(zkey))[rest] if rest else self._slice(int(zkey))
        return np.stack([self._slice(z)[rest] if rest else self._slice(z) for z in zs]) if len(zs) else \
            np.empty((0, *self.shape[1:]), self.dtype)[(slice(None), *rest)]

    def _slice(self, z: int) -> np.ndarray:
        if z < 0:
            z += self.shape[0]
        img = _imread_2d(self.files[z])
        if img.shape != self.shape[1:]:
            raise InputError(f"{self.files[z]}: slice shape {img.shape} differs from the first slice's {self.shape[1:]}")
        return img


def _open_slice_folder(path: Path) -> EMStack:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in SLICE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise InputError(f"{path}: folder holds no .tif/.tiff/.png slices")
    return EMStack(SliceFolder(files), None, str(path))


def _open_zarr(path: Path) -> EMStack:
    import zarr

    try:
        data = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise InputError(f"{path}: cannot open as zarr ({type(exc).__name__}: {exc})") from exc
    if not hasattr(data, "shape"):  # a group: an NGFF image at full resolution, else its first array
        from .ngff import open_ngff_level0

        ngff = open_ngff_level0(data)
        if ngff is not None:
            return EMStack(_squeeze_leading(ngff[0]), ngff[1], str(path))
        arrays = list(data.arrays()) if hasattr(data, "arrays") else []
        if not arrays:
            raise InputError(f"{path}: zarr group holds no array")
        data = arrays[0][1]
    voxel = data.attrs.get("voxel_size") if hasattr(data, "attrs") else None
    return EMStack(data, tuple(voxel) if voxel else None, str(path))


# ---------------------------------------------------------------------------------------------------- writing

def is_zarr_path(path: str | Path) -> bool:
    return str(path).rstrip("/").lower().endswith(".zarr")


@contextlib.contextmanager
def open_output(path: str | Path, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...] | None = None,
                voxel_size: tuple[float, ...] | None = None, downsample: str = "nearest",
                label: bool = False) -> Iterator[Any]:
    """Yield a writable array-like of ``shape``/``dtype`` that becomes ``path`` only when the block exits cleanly.

    ``.ome.zarr`` paths give the full-resolution level of an NGFF multiscale image (pyramid built with
    ``downsample``, "nearest" or "mean", at the end; ``label`` marks it an NGFF label image; see
    :mod:`napari_neuroedge.io.ngff`), ``.zarr`` paths a chunked zarr array, anything else a memory-mapped
    (uncompressed, BigTIFF when large) TIFF; memory stays bounded by what the caller writes at a time. On an exception (including a cancel) the
    temporary output is deleted. Raises :class:`OutputExistsError` if ``path`` exists.
    """
    path = Path(path)
    check_free(path)
    from .ngff import is_ome_zarr_path, open_ngff_output

    if is_ome_zarr_path(path):
        with open_ngff_output(path, shape, dtype, chunks, voxel_size, downsample, label) as arr:
            yield arr
        return
    if is_zarr_path(path):
        import zarr

        with atomic_dir(path) as tmp:
            arr = zarr.open(str(tmp), mode="w-", shape=shape, chunks=chunks or chunks_for(shape), dtype=dtype)
            if voxel_size is not None:
                arr.attrs["voxel_size"] = list(voxel_size)
            yield arr
        return
    import tifffile

    with atomic_path(path) as tmp:
        big = int(np.prod(shape)) * np.dtype(dtype).itemsize > 2**31
        tmp.unlink()
        mm = tifffile.memmap(tmp, shape=shape, dtype=dtype, bigtiff=big, photometric="minisblack")
        try:
            yield mm
            mm.flush()
        finally:
            del mm


def write_array(path: str | Path, data: np.ndarray, voxel_size: tuple[float, ...] | None = None) -> Path:
    """Write a whole in-memory array to TIFF, zarr or OME-Zarr (atomic, never overwriting).

    OME-Zarr pyramids of float data are downsampled by the mean, of integer (label) data by nearest neighbour.
    """
    integer = np.issubdtype(data.dtype, np.integer)
    with open_output(path, data.shape, data.dtype, voxel_size=voxel_size,
                     downsample="nearest" if integer else "mean") as out:
        out[...] = data
    return Path(path)
