"""The ``--overlay`` picture: predicted slices with their membranes over the raw image, beside the probability."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

OVERLAY_MAX_SLICES = 16


def overlay_rows(n: int, most: int = OVERLAY_MAX_SLICES) -> list[int]:
    """Which of ``n`` predicted slices the overlay shows: all of them, or ``most`` evenly spaced."""
    if n <= most:
        return list(range(n))
    return sorted({int(round(i * (n - 1) / (most - 1))) for i in range(most)})


def write_overlay(path: str | Path, panels: list[tuple[np.ndarray, np.ndarray, str]], threshold: float,
                  title: str = "") -> None:
    """PNG with one row per (raw slice, probability, caption): the raw slice (grey) with predicted membranes in
    magenta beside the probability map, each row captioned (e.g. "slice 3"), under a title line."""
    import imageio.v3 as iio
    from PIL import Image, ImageDraw

    from .atomic import atomic_write

    caption_h, gap = 14, 8
    rows = []
    for raw, prob, caption in panels:
        lo, hi = np.percentile(raw, [0.5, 99.5])
        grey = np.clip((raw.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
        rgb = np.stack([grey] * 3, -1)
        mem = prob >= threshold
        rgb[mem] = 0.45 * rgb[mem] + 0.55 * np.array([1.0, 0.0, 1.0])
        probrgb = np.stack([np.clip(prob, 0, 1)] * 3, -1)
        row = (np.concatenate([rgb, np.ones((raw.shape[0], gap, 3)), probrgb], 1) * 255).astype(np.uint8)
        rows.append((row, f"{caption}: membranes (magenta, threshold {threshold:g}) | boundary probability"))
    width = max(r.shape[1] for r, _ in rows)
    height = caption_h + sum(r.shape[0] + caption_h + gap for r, _ in rows)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 1), title, fill=(0, 0, 0))
    y = caption_h
    for row, caption in rows:
        draw.text((2, y + 1), caption, fill=(0, 0, 0))
        canvas.paste(Image.fromarray(row), (0, y + caption_h))
        y += caption_h + row.shape[0] + gap
    picture = np.asarray(canvas)
    atomic_write(path, lambda p: iio.imwrite(p, picture, extension=".png"))


def write_stack_overlay(path: str | Path, volume: Any, prob: Any, slices: Sequence[int] | None, threshold: float,
                        name: str) -> None:
    """:func:`write_overlay` of a prediction: ``prob`` (k, y, x) of ``volume``'s ``slices`` (None: a 2D image),
    at most :data:`OVERLAY_MAX_SLICES` rows, evenly spaced, each captioned with its slice number."""
    if slices is not None:
        src = list(slices)
        rows = overlay_rows(len(src))
        panels = [(np.asarray(volume[src[i]]), np.asarray(prob[i]), f"slice {src[i]}") for i in rows]
        title = (f"{name}: slices {', '.join(str(src[i]) for i in rows)}"
                 + (f" ({len(rows)} of {len(src)} predicted, evenly spaced)" if len(rows) < len(src) else ""))
    else:
        panels = [(np.asarray(volume[...]), np.asarray(prob[...]), "2D image")]
        title = name
    write_overlay(path, panels, threshold, title)
