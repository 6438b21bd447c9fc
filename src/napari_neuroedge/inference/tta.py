"""Test-time augmentation: invertible flips/rotations of the last two axes, for numpy arrays and torch tensors.

The seed's set (n=6): identity, hflip, vflip, rot90, rot180, rot270. The full dihedral group (n=8) adds
transpose and anti-transpose. Each transform's inverse is exact, so averaging inverted predictions is valid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Array = Any  # np.ndarray or torch.Tensor


def _flip(x: Array, axis: int) -> Array:
    if isinstance(x, np.ndarray):
        return np.flip(x, axis)
    return x.flip(axis)


def _rot(x: Array, k: int) -> Array:
    if isinstance(x, np.ndarray):
        return np.rot90(x, k, axes=(-2, -1))
    return x.rot90(k, dims=(-2, -1))


def _transpose(x: Array) -> Array:
    if isinstance(x, np.ndarray):
        return np.swapaxes(x, -1, -2)
    return x.transpose(-1, -2)


def _anti(x: Array) -> Array:
    return _rot(_transpose(x), 2)


# name -> (forward, inverse); all act on the last two axes
TRANSFORMS: dict[str, tuple[Callable[[Array], Array], Callable[[Array], Array]]] = {
    "identity": (lambda x: x, lambda x: x),
    "hflip": (lambda x: _flip(x, -1), lambda x: _flip(x, -1)),
    "vflip": (lambda x: _flip(x, -2), lambda x: _flip(x, -2)),
    "rot90": (lambda x: _rot(x, 1), lambda x: _rot(x, -1)),
    "rot180": (lambda x: _rot(x, 2), lambda x: _rot(x, 2)),
    "rot270": (lambda x: _rot(x, 3), lambda x: _rot(x, -3)),
    "transpose": (_transpose, _transpose),
    "antitranspose": (_anti, _anti),
}

SEED_6 = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270")
DIHEDRAL_8 = (*SEED_6, "transpose", "antitranspose")


def transform_names(n: int) -> tuple[str, ...]:
    """The transform set for ``n`` in {1, 6, 8}."""
    if n == 1:
        return ("identity",)
    if n == 6:
        return SEED_6
    if n == 8:
        return DIHEDRAL_8
    raise ValueError(f"TTA must be 1 (off), 6 (the seed's set) or 8 (dihedral group), got {n}")


def tta_predict(predict: Callable[[Array], Array], batch: Array, n: int = 6, variance: bool = False,
                stack: Callable[[list[Array]], Array] | None = None, max_batch: int | None = None) -> Array:
    """Average ``predict`` over the ``n`` transforms of a (B, C, h, w) batch, inverting each exactly.

    The transformed copies go through ``predict`` together, in calls of at most ``max_batch`` tiles where
    memory (or CPU cache) does not allow one call. On a square batch that is one group of n*B tiles; on a
    non-square one the rotations by 90/270 degrees (and the transposes) give (w, h) tiles, which form their own
    group. Returns (B, C, h, w), or (B, 2C, h, w) with the per-pixel variance over the transforms appended
    when ``variance`` is set.
    """
    names = transform_names(n)
    is_np = isinstance(batch, np.ndarray)
    if is_np:
        cat = lambda xs: np.concatenate(xs, 0)  # noqa: E731
    else:
        import torch

        cat = lambda xs: torch.cat(xs, 0)  # noqa: E731
    if stack is None:
        if is_np:
            stack = lambda xs: np.concatenate([np.ascontiguousarray(x) for x in xs], 0)  # noqa: E731
        else:
            stack = lambda xs: torch.cat([x.contiguous() for x in xs], 0)  # noqa: E731
    b = batch.shape[0]
    transformed = {nm: TRANSFORMS[nm][0](batch) for nm in names}
    groups: dict[tuple[int, ...], list[str]] = {}  # tile shape -> transforms giving it, in ``names`` order
    for nm in names:
        groups.setdefault(tuple(transformed[nm].shape[-2:]), []).append(nm)
    outputs: dict[str, Array] = {}
    for members in groups.values():
        stacked = stack([transformed[nm] for nm in members])
        if max_batch is None or max_batch >= stacked.shape[0]:
            out = predict(stacked)
        else:
            out = cat([predict(stacked[i:i + max_batch]) for i in range(0, stacked.shape[0], max_batch)])
        for i, nm in enumerate(members):
            outputs[nm] = out[i * b:(i + 1) * b]
    inv = [TRANSFORMS[nm][1](outputs[nm]) for nm in names]
    if is_np:
        arr = np.stack(inv, 0)
        mean = arr.mean(0)
        return np.concatenate([mean, arr.var(0)], 1) if variance else mean
    import torch

    arr = torch.stack(inv, 0)
    mean = arr.mean(0)
    return torch.cat([mean, arr.var(0, unbiased=False)], 1) if variance else mean
