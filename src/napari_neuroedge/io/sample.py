"""Synthetic EM-like stacks with known membranes, for tests, demos and napari sample data.

Cells are a Voronoi tessellation of random seeds that drift slowly from slice to slice; membranes are the
cell borders, 2-4 px wide and dark, on a brighter textured cytoplasm with small dark organelles; then blur,
Gaussian noise and a smooth intensity drift. Ground truth is exact because it is drawn first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class SyntheticStack:
    """``image``: uint8 (z, y, x) EM-like raw data; ``membrane``: uint8 (z, y, x), 1 = membrane, 0 = cell."""

    image: np.ndarray
    membrane: np.ndarray


def synthetic_em(shape: tuple[int, ...] = (4, 256, 256), cell_size: float = 40.0, seed: int = 0,
                 noise: float = 12.0, drift: float = 30.0) -> SyntheticStack:
    """Make a synthetic EM stack of ``shape`` = (z, y, x) or (y, x) with cells about ``cell_size`` px across.

    2D shapes give 2D arrays. ``noise`` is the Gaussian noise std and ``drift`` the peak-to-peak intensity drift,
    both in uint8 grey levels.
    """
    squeeze = len(shape) == 2
    if squeeze:
        shape = (1, *shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (y, x) or (z, y, x) with positive sizes, got {shape}")
    nz, ny, nx = shape
    rng = np.random.default_rng(seed)
    n_cells = max(2, int(ny * nx / cell_size**2))
    points = rng.uniform(0, 1, size=(n_cells, 2)) * (ny, nx)
    velocity = rng.normal(0, 1.0, size=(n_cells, 2))
    yy, xx = np.mgrid[0:ny, 0:nx]
    coords = np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.float32)
    images = np.empty(shape, np.uint8)
    membranes = np.empty(shape, np.uint8)
    for z in range(nz):
        pts = points + velocity * z
        _, owner = cKDTree(pts).query(coords)
        cells = owner.reshape(ny, nx)
        by = np.zeros((ny, nx), bool)  # pixels just above a horizontal cell border
        bx = np.zeros((ny, nx), bool)  # pixels just left of a vertical cell border
        by[:-1, :] = cells[:-1, :] != cells[1:, :]
        bx[:, :-1] = cells[:, :-1] != cells[:, 1:]

        def grow(k: int) -> np.ndarray:  # the border band shifted by k px across itself
            return np.roll(by, k, 0) | np.roll(bx, k, 1)

        # width 2, 3 or 4 px, varying smoothly over the image
        width = ndi.gaussian_filter(rng.uniform(0, 1, (ny, nx)), 8)
        width = (width - width.min()) / (np.ptp(width) + 1e-9)
        w2 = grow(0) | grow(1)
        w3 = w2 | grow(-1)
        w4 = w3 | grow(2)
        membrane = np.where(width < 1 / 3, w2, np.where(width < 2 / 3, w3, w4))
        cyto = 165 + 25 * ndi.gaussian_filter(rng.normal(0, 1, (ny, nx)), 3)
        organelles = ndi.gaussian_filter((rng.uniform(0, 1, (ny, nx)) > 0.9985).astype(float), 2.0)
        cyto -= 90 * organelles / (organelles.max() + 1e-9)
        img = np.where(membrane, 55.0, cyto)
        img = ndi.gaussian_filter(img, 1.0)
        ramp = np.linspace(-drift / 2, drift / 2, nx)[None, :] * (1 if z % 2 == 0 else -1)
        img = img + ramp + rng.normal(0, noise, (ny, nx))
        images[z] = np.clip(img, 0, 255).astype(np.uint8)
        membranes[z] = membrane.astype(np.uint8)
    if squeeze:
        return SyntheticStack(images[0], membranes[0])
    return SyntheticStack(images, membranes)
