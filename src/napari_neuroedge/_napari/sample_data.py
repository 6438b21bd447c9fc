"""npe2 sample data: a synthetic EM stack with its exact membrane labels (no download needed)."""

from __future__ import annotations

from typing import Any

from . import _triton_guard  # noqa: F401

SAMPLE_SHAPE = (5, 256, 256)


def synthetic_stack() -> list[tuple[Any, dict[str, Any], str]]:
    """[(image uint8 (5, 256, 256), ...), (ground-truth membranes uint8, 1 = membrane, ...)]."""
    from ..io.sample import synthetic_em

    stack = synthetic_em(SAMPLE_SHAPE, cell_size=40.0, seed=0)
    return [
        (stack.image, {"name": "synthetic EM", "metadata": {"source": "napari-neuroedge synthetic sample"}}, "image"),
        (stack.membrane, {"name": "synthetic EM ground truth", "opacity": 0.4, "visible": False}, "labels"),
    ]
