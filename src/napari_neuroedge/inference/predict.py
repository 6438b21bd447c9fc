"""Overlap-tile inference over 2D images and (z, y, x) stacks, writing into any array-like sink.

A *predictor* is any callable mapping a float32 batch (B, 1, t, t) to (B, C, t, t) (numpy in, numpy out);
:class:`TorchPredictor` wraps a torch model (with optional TTA on the device). :func:`iter_predict` is a
generator: it yields a :class:`ProgressEvent` after every tile batch, so a caller can report progress and stop
between batches (see :func:`napari_neuroedge.progress.drive`). Memory: each slice is processed in bands of tile
rows, so besides the model only O(tile x width) floats are held, whatever the image height or stack depth.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np

from ..config import NormConfig, TileConfig, TTAConfig
from ..progress import Progress, ProgressEvent, drive
from ..slices import SliceSpec, parse_slices
from .normalize import slice_stats
from .stitch import Predictor, stitch_plane, tiles_per_pass
from .tile_size import resolve_tile
from .tiling import DEFAULT_CONTEXT, PlaneView, TileGrid, blend_window, make_grid


class TorchPredictor:
    """Numpy (B, 1, t, t) -> numpy (B, C, t, t) probabilities from a torch model returning logits (or
    probabilities, when the model has ``returns_probability = True``, as bioimage.io packages may).

    Runs under ``torch.inference_mode`` on ``device`` in ``precision`` ("auto": fp16 autocast on CUDA, bf16 on
    CPUs with native bf16, else fp32; see :mod:`.precision`), in channels_last layout on the CPU. ``amp=False``
    is the same as ``precision="fp32"``. TTA (if ``tta.n > 1``) runs on the device, its n*B transformed tiles
    batched into forward passes of at most ``max_batch`` tiles (default: 1 Mpx per pass on the CPU, where big
    batches only thrash the cache; 8 Mpx on accelerators). C is 1, or 2 with the TTA variance.
    The model runs with its batch norms folded into the convolutions (``fold_bn``, on a copy: ``model`` itself
    is left as it is; see :mod:`.fusion`).
    """

    def __init__(self, model: Any, device: Any = "cpu", amp: bool = True, tta: TTAConfig | None = None,
                 max_batch: int | None = None, precision: str | None = None, fold_bn: bool = True) -> None:
        import torch

        from .precision import resolve_precision, uses_channels_last

        self.torch = torch
        self.device = torch.device(device)
        self.requested_precision = precision or ("auto" if amp else "fp32")
        self.precision = resolve_precision(self.requested_precision, self.device)
        self.channels_last = uses_channels_last(self.device)
        if fold_bn:
            from .fusion import fold_batchnorm

            model = fold_batchnorm(model)
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.tta = tta or TTAConfig()
        self.multiple = int(getattr(model, "multiple", 1))
        self.context = int(getattr(model, "context_px", 0))  # measured receptive context (px); 0 = unknown
        self.returns_probability = bool(getattr(model, "returns_probability", False))  # else logits
        self.out_channels = 2 if (self.tta.n > 1 and self.tta.variance) else 1
        self._max_batch = max_batch
        self._last_pixels = 512 * 512  # pixels of one tile of the latest call (for shrink)

    def batch_limit(self, tile_pixels: int) -> int:
        """Tiles of ``tile_pixels`` px per forward pass: ``max_batch`` if given, else 1 Mpx per pass on the CPU
        (4 tiles of 512^2, where bigger batches only thrash the cache) and 8 Mpx on accelerators."""
        if self._max_batch:
            return self._max_batch
        pixels = 2**20 if self.device.type == "cpu" else 2**23
        return max(1, pixels // max(int(tile_pixels), 1))

    def shrink(self) -> bool:
        """Halve the TTA batch (forward passes of fewer transformed tiles; for the out-of-memory fallback).
        False when there is nothing left to halve (no TTA, or already one tile per pass)."""
        current = min(self.batch_limit(self._last_pixels), self.tta.n)  # transformed tiles per pass, one tile
        if self.tta.n <= 1 or current <= 1:
            return False
        self._max_batch = current // 2
        return True

    def on_cpu(self) -> TorchPredictor:
        """The same model and settings on the CPU (for the out-of-memory fallback)."""
        return TorchPredictor(self.model, "cpu", tta=self.tta, max_batch=self._max_batch,
                              precision=self.requested_precision, fold_bn=False)  # already folded

    def auto_tile(self) -> int:
        """The largest tile this device's free memory allows in this precision (see :mod:`.tile_size`)."""
        from .tile_size import auto_tile

        return auto_tile(self.precision, self.device)

    def describe(self) -> str:
        """Device, precision and layout in one line, e.g. ``"cpu, fp32, channels_last"``."""
        from .precision import summary

        return summary(self.precision, self.device)

    def _probs(self, x: Any) -> Any:
        from .precision import autocast

        torch = self.torch
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.precision, self.device):
            out = self.model(x)
        return (out.float() if self.returns_probability else torch.sigmoid(out.float())).contiguous()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        from .tta import tta_predict

        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self.device)
            self._last_pixels = int(x.shape[-2]) * int(x.shape[-1])
            if self.tta.n > 1:
                y = tta_predict(self._probs, x, self.tta.n, self.tta.variance,
                                max_batch=self.batch_limit(self._last_pixels))
            else:
                y = self._probs(x)
            return y.float().cpu().numpy()


def _plane_writer(sink: Any, z: int | None) -> Callable[[int, int, np.ndarray], None]:
    """Return write(y0, y1, rows) writing rows [y0, y1) of one slice into ``sink``."""
    def write(y0: int, y1: int, rows: np.ndarray) -> None:
        if z is None:
            sink[y0:y1, :] = rows.astype(sink.dtype, copy=False)
        else:
            sink[z, y0:y1, :] = rows.astype(sink.dtype, copy=False)
    return write


def resolve_context(tile: TileConfig, predictor: Any) -> int:
    """Context (px) for tiling: the config's if set, else the predictor's measured one, else the default's."""
    return int(tile.context or getattr(predictor, "context", 0) or DEFAULT_CONTEXT)


def plan_grid(shape: Sequence[int], tile: TileConfig, predictor: Any) -> TileGrid:
    """The tile grid :func:`iter_predict` uses for slices of ``shape`` (..., y, x) with ``predictor``."""
    return make_grid(int(shape[-2]), int(shape[-1]), resolve_tile(tile.tile, predictor), resolve_context(tile, predictor),
                     int(getattr(predictor, "multiple", 1)))


def count_tiles(volume_shape: Sequence[int], tile: TileConfig, predictor: Any = None,
                n_slices: int | None = None) -> int:
    """Total number of tiles :func:`iter_predict` will run with ``predictor`` (for progress totals)."""
    grid = plan_grid(volume_shape, tile, predictor)
    depth = n_slices if n_slices is not None else (int(volume_shape[0]) if len(volume_shape) == 3 else 1)
    return grid.n_tiles * depth


def iter_predict(volume: Any, predictor: Predictor, sinks: Sequence[Any], *, tile: TileConfig | None = None,
                 norm: NormConfig | None = None, slices: SliceSpec = None
                 ) -> Generator[ProgressEvent, None, None]:
    """Predict ``volume`` ((y, x) or (z, y, x) array-like, any dtype) tile by tile into ``sinks``.

    ``sinks[c]`` receives output channel c (channel 0: boundary probability; 1: TTA variance when the
    predictor returns it); each sink has the volume's (y, x) shape and, for stacks, one slice per selected
    slice, in order. Yields a ProgressEvent(done_tiles, total_tiles) after each batch.
    """
    tile = tile or TileConfig()
    norm = norm or NormConfig()
    if volume.ndim not in (2, 3):
        raise ValueError(f"expected a 2D image or 3D stack, got shape {tuple(volume.shape)}")
    if tile.batch < 1:
        raise ValueError(f"batch must be >= 1, got {tile.batch}")
    grid = plan_grid(volume.shape, tile, predictor)
    window = blend_window(grid.tile_shape, tile.blend, grid.context)
    batch = tiles_per_pass(tile.batch, grid, predictor)
    zs: Sequence[int | None] = [None] if volume.ndim == 2 else list(parse_slices(slices, int(volume.shape[0])))
    total = grid.n_tiles * len(zs)
    done = [0]
    for k, z in enumerate(zs):
        plane = PlaneView(volume, z)
        writers = [_plane_writer(s, None if z is None else k) for s in sinks]
        yield from stitch_plane(plane, predictor, grid, window, batch, slice_stats(plane, norm), writers,
                                done, total)


def predict_array(volume: Any, predictor: Predictor, *, tile: TileConfig | None = None, norm: NormConfig | None = None,
                  slices: SliceSpec = None, channels: int | None = None,
                  progress: Progress | None = None) -> np.ndarray:
    """In-memory convenience: returns float32 (C, ...) if ``channels`` > 1, else the volume-shaped probability."""
    c = channels or int(getattr(predictor, "out_channels", 1))
    if volume.ndim == 3:
        shape: tuple[int, ...] = (len(parse_slices(slices, int(volume.shape[0]))), *volume.shape[-2:])
    else:
        shape = tuple(volume.shape)
    outs = [np.zeros(shape, np.float32) for _ in range(c)]
    drive(iter_predict(volume, predictor, outs, tile=tile, norm=norm, slices=slices), progress)
    return outs[0] if c == 1 else np.stack(outs)
