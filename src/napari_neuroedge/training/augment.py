"""Training augmentation: random crop, the seed's flip/rotation scheme, U-Net elastic deformation, contrast, and
the transfer augmentations (pixel size, gamma, blur, noise) that make a model meet other microscopes.

A *sample* is a dict of 2D numpy arrays of identical shape (H, W): ``"image"`` is the float32 input, every
other key (``"label"``, ``"mask"``, ``"weight"``, ``"tube"``, ``"band"``, ...) is a per-pixel map that receives
exactly the same geometric transform, resampled with nearest-neighbour interpolation so that label values are
never invented. Only ``"image"`` is interpolated bicubically and only ``"image"`` gets the contrast change.
All randomness comes from the ``np.random.Generator`` passed in, so a seed reproduces a sample exactly.

Also here: :func:`crop_windows_with_corners`, the tiling used to cut very large images into training windows.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..config import AugmentConfig

IMAGE_KEY = "image"
FLIP_ROT_NAMES: tuple[str, ...] = ("hflip", "vflip", "rot90", "rot180", "rot270", "none")

__all__ = [
    "FLIP_ROT_NAMES",
    "apply_flip_rot",
    "apply_gamma",
    "augment_sample",
    "crop_windows_with_corners",
    "elastic_field",
    "elastic_warp",
    "flip_rot_choice",
    "random_crop",
    "rescale_sample",
]


def _check_sample(sample: dict[str, np.ndarray]) -> tuple[int, int]:
    """Validate that ``sample`` has a 2D ``"image"`` and that every map has its shape; return (H, W)."""
    if IMAGE_KEY not in sample:
        raise KeyError("sample has no 'image' key")
    shape = np.shape(sample[IMAGE_KEY])
    if len(shape) != 2:
        raise ValueError(f"sample['image'] must be 2D (H, W), got shape {shape}")
    for key, arr in sample.items():
        if np.shape(arr) != shape:
            raise ValueError(f"sample[{key!r}] has shape {np.shape(arr)}, expected {shape} like 'image'")
    return int(shape[0]), int(shape[1])


# --------------------------------------------------------------------------------------------- crop


def random_crop(sample: dict[str, np.ndarray], size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Crop every map of ``sample`` to the same random ``size`` x ``size`` window.

    An axis shorter than ``size`` is first reflect-padded (split evenly before/after) to ``size`` for every
    map alike. The top-left corner is drawn uniformly (y first, then x) from the valid positions.
    Returns new contiguous arrays with the input dtypes.
    """
    if size <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    h, w = _check_sample(sample)
    pad_y = max(size - h, 0)
    pad_x = max(size - w, 0)
    pads = ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2))
    ph, pw = h + pad_y, w + pad_x
    y0 = int(rng.integers(0, ph - size + 1))
    x0 = int(rng.integers(0, pw - size + 1))
    out: dict[str, np.ndarray] = {}
    for key, arr in sample.items():
        a = np.asarray(arr)
        if pad_y or pad_x:
            # numpy's "reflect" repeats the reflection when the pad exceeds the axis length.
            a = np.pad(a, pads, mode="reflect")
        out[key] = np.ascontiguousarray(a[y0 : y0 + size, x0 : x0 + size])
    return out


# ---------------------------------------------------------------------------------- flip / rotation


def flip_rot_choice(u: float) -> str:
    """The seed's flip/rotation scheme for a draw ``u`` in [0, 1).

    u < 2/8: "hflip"; < 3/8: "vflip"; < 4/8: "rot90"; < 5/8: "rot180"; < 6/8: "rot270"; else "none".
    Boundaries are half-open: u == 2/8 exactly gives "vflip".
    """
    # Compare u * 8 against integers: exact for the boundary values k/8 (powers of two are exact in binary).
    v = u * 8.0
    if v < 2.0:
        return "hflip"
    if v < 3.0:
        return "vflip"
    if v < 4.0:
        return "rot90"
    if v < 5.0:
        return "rot180"
    if v < 6.0:
        return "rot270"
    return "none"


def apply_flip_rot(arr: np.ndarray, name: str) -> np.ndarray:
    """Apply one of :data:`FLIP_ROT_NAMES` to the last two axes (y, x) of ``arr``; returns a contiguous copy.

    "hflip" mirrors left-right (x axis), "vflip" up-down (y axis), "rotK" rotates K degrees counter-clockwise
    (``np.rot90`` convention; rotations swap H and W for non-square arrays).
    """
    a = np.asarray(arr)
    if a.ndim < 2:
        raise ValueError(f"need at least 2 dims, got shape {a.shape}")
    if name == "hflip":
        out = a[..., :, ::-1]
    elif name == "vflip":
        out = a[..., ::-1, :]
    elif name == "rot90":
        out = np.rot90(a, 1, axes=(-2, -1))
    elif name == "rot180":
        out = np.rot90(a, 2, axes=(-2, -1))
    elif name == "rot270":
        out = np.rot90(a, 3, axes=(-2, -1))
    elif name == "none":
        out = a
    else:
        raise ValueError(f"unknown flip/rotation {name!r}; expected one of {FLIP_ROT_NAMES}")
    return np.ascontiguousarray(out)


# ------------------------------------------------------------------------------------------ elastic


def elastic_field(
    shape: tuple[int, int], grid: int, sigma: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random displacement field (dy, dx), each float32 (H, W) in pixels (U-Net style).

    Displacements on a coarse ``grid`` x ``grid`` lattice (spanning the image corner to corner) are drawn
    i.i.d. ~ N(0, ``sigma``) per component (dy lattice first, then dx), then upsampled to every pixel with a
    cubic spline. ``grid`` == 1 gives a uniform shift.
    """
    h, w = int(shape[0]), int(shape[1])
    if grid < 1:
        raise ValueError(f"elastic grid must be >= 1, got {grid}")
    coarse_y = rng.normal(0.0, sigma, size=(grid, grid))
    coarse_x = rng.normal(0.0, sigma, size=(grid, grid))
    if grid == 1:
        return (
            np.full((h, w), coarse_y[0, 0], dtype=np.float32),
            np.full((h, w), coarse_x[0, 0], dtype=np.float32),
        )
    # Pixel (y, x) sits at lattice coordinate (y * (grid-1)/(H-1), x * (grid-1)/(W-1)).
    cy = np.linspace(0.0, grid - 1.0, h) if h > 1 else np.zeros(1)
    cx = np.linspace(0.0, grid - 1.0, w) if w > 1 else np.zeros(1)
    yy, xx = np.meshgrid(cy, cx, indexing="ij")
    coords = np.stack([yy, xx])
    dy = ndimage.map_coordinates(coarse_y, coords, order=3, mode="mirror")
    dx = ndimage.map_coordinates(coarse_x, coords, order=3, mode="mirror")
    return dy.astype(np.float32), dx.astype(np.float32)


def _reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Map integer indices into [0, n) by half-sample symmetric reflection (scipy's mode="reflect")."""
    period = 2 * n
    m = np.mod(idx, period)
    return np.where(m >= n, period - 1 - m, m)


def elastic_warp(
    sample: dict[str, np.ndarray], dy: np.ndarray, dx: np.ndarray
) -> dict[str, np.ndarray]:
    """Resample every map at (y + dy, x + dx): ``"image"`` bicubic, all other maps nearest-neighbour.

    Both use reflective boundaries (scipy ``mode="reflect"``). Nearest sampling is done by rounding the same
    coordinates and indexing, so it works for any dtype (bool included) and only ever copies existing values.
    """
    h, w = _check_sample(sample)
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    return _sample_at(sample, yy + dy, xx + dx)


def _sample_at(sample: dict[str, np.ndarray], sy: np.ndarray, sx: np.ndarray,
               image_sigma: float = 0.0) -> dict[str, np.ndarray]:
    """Every map of ``sample`` read at source coordinates (``sy``, ``sx``) (float arrays of the output shape,
    reflective boundaries): ``"image"`` bicubic (after a gaussian low-pass of ``image_sigma`` px if > 0), all
    other maps nearest-neighbour by rounding and indexing (any dtype, only existing values)."""
    h, w = _check_sample(sample)
    iy = _reflect_index(np.floor(sy + 0.5).astype(np.int64), h)
    ix = _reflect_index(np.floor(sx + 0.5).astype(np.int64), w)
    out: dict[str, np.ndarray] = {}
    for key, arr in sample.items():
        a = np.asarray(arr)
        if key == IMAGE_KEY:
            img = a.astype(np.float32, copy=False)
            if image_sigma > 0:
                img = ndimage.gaussian_filter(img, image_sigma, mode="reflect")
            warped = ndimage.map_coordinates(img, np.stack([sy, sx]), order=3, mode="reflect")
            out[key] = warped.astype(a.dtype, copy=False)
        else:
            out[key] = np.ascontiguousarray(a[iy, ix])
    return out


# ----------------------------------------------------------------------------------- transfer augmentation


def rescale_sample(sample: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Resample every map of a square (S, S) sample to (``size``, ``size``): a change of pixel size by S / size.

    Pixel centres map as y_in = (y_out + 0.5) * S / size - 0.5. ``"image"`` is sampled with a cubic spline, after
    a gaussian low-pass of sigma 0.5 * sqrt(f^2 - 1) px when shrinking by f = S / size > 1 (so that fine texture
    averages out as at a coarser pixel size instead of aliasing); every other map is sampled nearest-neighbour
    (labels keep their values; membranes at least f px wide stay closed).
    """
    h, w = _check_sample(sample)
    if h != w:
        raise ValueError(f"rescale_sample needs a square sample, got {h} x {w}")
    f = h / size
    pos = (np.arange(size, dtype=np.float64) + 0.5) * f - 0.5
    yy, xx = np.meshgrid(pos, pos, indexing="ij")
    return _sample_at(sample, yy, xx, 0.5 * np.sqrt(f * f - 1.0) if f > 1.0 else 0.0)


def apply_gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    """Gamma curve on the normalised [0, 1] range: x -> x ** gamma there; values outside keep their offset.

    ``image`` is a normalised float image (0 and 1 are the normalisation's low / high percentiles); the part
    clipped to [0, 1] is bent, the excess beyond it is added back, so the map is monotone and continuous.
    """
    img = np.asarray(image)
    clipped = np.clip(img, 0.0, 1.0)
    return (img + (clipped ** gamma - clipped)).astype(img.dtype, copy=False)


# ------------------------------------------------------------------------------------------ pipeline


def augment_sample(
    sample: dict[str, np.ndarray], rng: np.random.Generator, cfg: AugmentConfig
) -> dict[str, np.ndarray]:
    """Augment one training sample; returns a new dict with the same keys and dtypes.

    Steps, in order: (a) random ``cfg.crop`` x ``cfg.crop`` crop (reflect-padding short axes; ``crop`` <= 0
    keeps the full image); (b) if ``cfg.flip_rot``, one draw u ~ U[0, 1) picks the flip/rotation
    (:func:`flip_rot_choice`); (c) with probability ``cfg.elastic_p`` an elastic deformation
    (:func:`elastic_field` + :func:`elastic_warp`); (d) with probability ``cfg.contrast_p`` the image is
    multiplied by a factor ~ U(``cfg.contrast_low``, ``cfg.contrast_high``); then the transfer augmentations,
    each with its own probability: (e) gamma (:func:`apply_gamma`), (f) gaussian blur, (g) gaussian noise.
    With probability ``cfg.scale_p`` step (a) instead crops a window ``s`` times the crop size, s log-uniform in
    [``scale_low``, ``scale_high``], and resamples it to the crop size (:func:`rescale_sample`). Steps whose
    probability is 0 draw nothing from ``rng`` (so older configs reproduce their crops exactly).
    """
    _check_sample(sample)
    out = {k: np.asarray(v) for k, v in sample.items()}
    scale = 1.0
    if cfg.scale_p > 0 and rng.random() < cfg.scale_p:
        scale = float(np.exp(rng.uniform(np.log(cfg.scale_low), np.log(cfg.scale_high))))
    if cfg.crop > 0 and scale != 1.0:
        out = rescale_sample(random_crop(out, max(int(round(cfg.crop * scale)), 1), rng), cfg.crop)
    elif cfg.crop > 0:
        out = random_crop(out, cfg.crop, rng)
    if cfg.flip_rot:
        name = flip_rot_choice(float(rng.random()))
        out = {k: apply_flip_rot(v, name) for k, v in out.items()}
    if cfg.elastic_p > 0 and rng.random() < cfg.elastic_p:
        dy, dx = elastic_field(out[IMAGE_KEY].shape, cfg.elastic_grid, cfg.elastic_sigma, rng)
        out = elastic_warp(out, dy, dx)
    if cfg.contrast_p > 0 and rng.random() < cfg.contrast_p:
        factor = rng.uniform(cfg.contrast_low, cfg.contrast_high)
        img = out[IMAGE_KEY]
        out[IMAGE_KEY] = (img * factor).astype(img.dtype, copy=False)
    if cfg.gamma_p > 0 and rng.random() < cfg.gamma_p:
        out[IMAGE_KEY] = apply_gamma(out[IMAGE_KEY], float(rng.uniform(cfg.gamma_low, cfg.gamma_high)))
    if cfg.blur_p > 0 and rng.random() < cfg.blur_p:
        img = out[IMAGE_KEY]
        sigma = float(rng.uniform(0.3, max(cfg.blur_sigma_high, 0.3)))
        out[IMAGE_KEY] = ndimage.gaussian_filter(img.astype(np.float32), sigma, mode="reflect").astype(img.dtype)
    if cfg.noise_p > 0 and rng.random() < cfg.noise_p:
        img = out[IMAGE_KEY]
        std = float(rng.uniform(0.0, cfg.noise_std_high))
        out[IMAGE_KEY] = (img + rng.normal(0.0, std, img.shape)).astype(img.dtype)
    # Never hand back views of the caller's arrays (e.g. full-size crop + "none").
    return {k: (v.copy() if np.may_share_memory(v, sample[k]) else v) for k, v in out.items()}


# ------------------------------------------------------------------------------- large-image windows


def _grid_positions(n: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px along an axis of length ``n``; the last one ends at ``n``."""
    if n <= tile:
        return [0]
    pos = list(range(0, n - tile + 1, stride))
    if pos[-1] != n - tile:
        pos.append(n - tile)
    return pos


def crop_windows_with_corners(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of training windows of ``tile`` x ``tile`` px cut from a large image.

    First a regular grid of overlapping tiles (stride ``tile - overlap``, last tile flush with the bottom /
    right border), row-major; then one tile centred on every interior grid corner, i.e. where four grid
    tiles meet: the corner point between consecutive grid tiles is the middle of their overlap band,
    ``(start_i + start_{i+1} + tile) // 2``, and the tile's corner is that point minus ``tile // 2``, clamped
    to the image. Duplicates are dropped (first occurrence kept). An axis shorter than ``tile`` gets the
    single offset 0 (the window then extends past the image on that axis; callers pad).
    """
    if tile <= 0:
        raise ValueError(f"tile must be positive, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap} for tile {tile}")
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    stride = tile - overlap
    ys = _grid_positions(height, tile, stride)
    xs = _grid_positions(width, tile, stride)
    windows: dict[tuple[int, int], None] = {}
    for y in ys:
        for x in xs:
            windows[(y, x)] = None

    def centred(starts: list[int], n: int) -> list[int]:
        out = []
        for a, b in zip(starts[:-1], starts[1:]):
            point = (a + b + tile) // 2
            out.append(min(max(point - tile // 2, 0), max(n - tile, 0)))
        return out

    for y in centred(ys, height):
        for x in centred(xs, width):
            windows[(y, x)] = None
    return list(windows)
