"""The held-out part of the user's corrected slices: square blocks spread over every slice, never trained on.

A band of the bottom rows (the previous split) left a 250 x 250 slice 62 rows of validation, one strip of a few
neurons. Here each slice is cut into a grid of blocks (:func:`block_size` px, about a fifth of the slice's
shorter side) and every ``k``-th diagonal of blocks (``k = round(1 / fraction)``) is held out, so the held-out
pixels are spread over the whole slice, touch many neurons, and each block is a unit the choice of the kept model
can count its evidence in (:mod:`~napari_neuroedge.training.guard`). There are ``k`` such folds; where the user's
changes (``LabelledSlice.corrected``) are known, each slice holds out the fold whose share of them is nearest
``fraction``, so the held-out part also holds pixels the user disagreed with.

The training copy of a slice keeps its whole image (context, never a label) but its labels, mask and corrected map
are zeroed on the held-out blocks grown by :data:`MARGIN` px, so no loss term (the masked pixels, Skeleton
Recall's tubes, the weight maps) ever sees a held-out label. The validation copy is the whole slice with its
mask restricted to the held-out blocks: the model predicts the slice whole (neurons are not cut at block
borders) and is scored on the held-out pixels only.

Blocks of the slices a model was trained on flatter it: a neuron of a held-out block was trained on a few px away,
and a block (a fifth of the slice) rarely holds both neurons that a gap elsewhere merged. On VNC a fine-tune that
halved the held-out blocks' Rand error doubled it on the next slices (README, issue 23). Where there are two
corrected slices or more, :func:`slice_folds` holds out whole slices instead (cross-fitting): one model is trained
on every other slice and validated on the rest, whole, and a second the other way round, so every corrected
slice is validated on once by a model that never saw it, just as the user's other slices will be.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from scipy import ndimage as ndi

from .dataset import LabelledSlice

#: Held-out blocks are grown by this many px before their labels are removed from the training copy.
MARGIN = 2
#: A slice narrower than this cannot hold out blocks and keep enough to train on.
MIN_SIDE = 64


def block_size(shape: Sequence[int]) -> int:
    """Side (px) of the held-out blocks of an (H, W) slice: a fifth of its shorter side, within [32, 96]."""
    return int(np.clip(min(int(shape[0]), int(shape[1])) // 5, 32, 96))


def n_folds(fraction: float) -> int:
    """How many folds (diagonals of blocks) a held-out ``fraction`` makes: ``round(1 / fraction)``, at least 2."""
    return max(2, int(round(1.0 / fraction)))


def block_index(shape: Sequence[int], block: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of the block each pixel of an (H, W) slice lies in, both int (H, W)."""
    yy, xx = np.indices((int(shape[0]), int(shape[1])))
    return yy // block, xx // block


def fold_mask(shape: Sequence[int], fraction: float, fold: int, block: int | None = None) -> np.ndarray:
    """bool (H, W): the pixels of the blocks of ``fold`` (blocks (i, j) with ``(i + j) % k == fold``)."""
    b = block_size(shape) if block is None else block
    i, j = block_index(shape, b)
    return (i + j) % n_folds(fraction) == fold


def choose_fold(sl: LabelledSlice, fraction: float, default: int) -> int:
    """The fold of ``sl`` whose share of the user's changed pixels is nearest ``fraction`` (``default`` when the
    changes are unknown or there are none, and on ties)."""
    k = n_folds(fraction)
    if sl.corrected is None or not np.any(sl.corrected):
        return default % k
    changed = np.asarray(sl.corrected) > 0
    if sl.mask is not None:
        changed &= np.asarray(sl.mask) > 0
    total = max(int(changed.sum()), 1)
    b = block_size(sl.image.shape)
    i, j = block_index(sl.image.shape, b)
    share = np.bincount(((i + j) % k)[changed], minlength=k) / total
    return min(range(k), key=lambda f: (abs(share[f] - fraction), (f - default) % k))


def _train_copy(sl: LabelledSlice, held: np.ndarray) -> LabelledSlice:
    cut = ndi.binary_dilation(held, iterations=MARGIN) if MARGIN > 0 else held
    keep = ~cut if sl.mask is None else (~cut & (np.asarray(sl.mask) > 0))
    label = np.where(cut, 0, sl.label).astype(sl.label.dtype)
    corrected = None if sl.corrected is None else np.where(cut, 0, sl.corrected).astype(sl.corrected.dtype)
    return replace(sl, label=label, mask=keep.astype(np.uint8), corrected=corrected, meta={**sl.meta, "part": "train"})


def split_holdout(slices: Sequence[LabelledSlice], fraction: float, fold: int | None = None
                  ) -> tuple[list[LabelledSlice], list[LabelledSlice]]:
    """(train, val) of the corrected ``slices``: one copy of each to train on, one to validate on (see the module
    docstring). ``fold`` None picks each slice's fold by :func:`choose_fold` (default: the slice's position
    modulo the folds); an int holds out that fold in every slice. ``fraction`` 0 gives no validation. Slices
    under :data:`MIN_SIDE` px a side are trained on whole; if all are, it is an error."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return list(slices), []
    small = [sl for sl in slices if min(sl.image.shape) < MIN_SIDE]
    if len(small) == len(slices):
        h, w = small[0].image.shape
        raise ValueError(f"slice {small[0].meta.get('slice', '?')} is {h} x {w} px: too small to hold out "
                         f"{fraction:.0%} of it for validation (at least {MIN_SIDE} px a side)")
    train, val = [], []
    for n, sl in enumerate(slices):
        if min(sl.image.shape) < MIN_SIDE:  # e.g. a large image's window clipped at its edge: trained on only
            train.append(sl)
            continue
        f = choose_fold(sl, fraction, n) if fold is None else fold % n_folds(fraction)
        b = block_size(sl.image.shape)
        held = fold_mask(sl.image.shape, fraction, f, b)
        if sl.mask is not None:
            held &= np.asarray(sl.mask) > 0
        train.append(_train_copy(sl, held))
        val.append(replace(sl, mask=held.astype(np.uint8),
                           meta={**sl.meta, "part": "validation", "fold": int(f), "block": b}))
    return train, val


def slice_folds(slices: Sequence[LabelledSlice]) -> list[tuple[list[LabelledSlice], list[LabelledSlice]]]:
    """Two (train, val) folds over whole corrected slices: fold 1 validates on slices 2, 4, ... (by position) and
    trains on the others, fold 2 the other way round; a validation slice is the whole slice (its mask: its own
    labelled pixels) cut into :func:`block_size` blocks for the guard. Slices under :data:`MIN_SIDE` px a side
    are trained on in both folds and never validated on. Empty when fewer than two slices are large enough, and for
    windows of one large image (``meta["window"]``): they may overlap, so a window validated on could share pixels
    with one trained on (their held-out blocks are cut from both alike)."""
    usable = [i for i, sl in enumerate(slices) if min(sl.image.shape) >= MIN_SIDE]
    if len(usable) < 2 or any(sl.meta.get("window") is not None for sl in slices):
        return []
    groups = [usable[1::2], usable[0::2]]  # validated on in fold 1, fold 2
    folds = []
    for k, held in enumerate(groups):
        train = [sl for i, sl in enumerate(slices) if i not in held]
        val = [replace(slices[i], meta={**slices[i].meta, "part": "validation", "fold": k,
                                        "block": block_size(slices[i].image.shape)}) for i in held]
        folds.append((train, val))
    return folds


def held_out_blocks(sl: LabelledSlice) -> list[tuple[slice, slice]]:
    """The (rows, columns) windows of the blocks of a validation slice that hold labelled (held-out) pixels; a
    slice not made by :func:`split_holdout` (the CLI's ``--val-data``) is cut into :func:`block_size` blocks."""
    h, w = sl.image.shape
    b = int(sl.meta.get("block") or block_size(sl.image.shape))
    mask = np.ones((h, w), bool) if sl.mask is None else np.asarray(sl.mask) > 0
    out = []
    for y in range(0, h, b):
        for x in range(0, w, b):
            win = (slice(y, min(y + b, h)), slice(x, min(x + b, w)))
            if mask[win].any():
                out.append(win)
    return out
