"""Measuring a model's receptive context: how far from a pixel the input still changes its output.

Tiles overlap by twice this context (see :func:`napari_neuroedge.inference.tiling.make_grid`), so every pixel is
predicted by a tile that sees all the input that matters to it, and the tiled result equals whole-image
inference to ``tol``. Measured once per trained model and stored in its checkpoint (``Checkpoint.context``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def context_profile(model: torch.nn.Module, image: np.ndarray, crop: int = 256, step: int = 8
                    ) -> list[tuple[int, float]]:
    """[(d, max |p_crop - p_whole|) over crop pixels at least d px inside the crop], d = 0, step, ... < crop/2.

    ``image`` is a normalised (H, W) float32 slice of at least 2 * crop px each way; the crop is its centre,
    predicted alone (its border sees the network's zero padding) and inside the whole image.
    """
    h, w = image.shape
    if min(h, w) < 2 * crop:
        raise ValueError(f"need an image of at least {2 * crop} px each way to measure context, got {image.shape}")
    y0, x0 = (h - crop) // 2, (w - crop) // 2
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        def probs(a: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(np.ascontiguousarray(a, np.float32))[None, None]
            dev = next(model.parameters()).device
            return torch.sigmoid(model(x.to(dev)).float())[0, 0].cpu().numpy()

        whole = probs(image)[y0:y0 + crop, x0:x0 + crop]
        alone = probs(image[y0:y0 + crop, x0:x0 + crop])
    model.train(was_training)
    diff = np.abs(alone - whole)
    r = np.arange(crop)
    edge = np.minimum(r, r[::-1])
    dist = np.minimum(edge[:, None], edge[None, :])
    return [(d, float(diff[dist >= d].max())) for d in range(0, crop // 2, step)]


def measure_context(model: torch.nn.Module, images: Sequence[np.ndarray], tol: float = 1e-3, crop: int = 256,
                    step: int = 8) -> int:
    """The smallest d (a multiple of ``step`` px) beyond which the probability changes by < ``tol`` on every
    image; ``crop // 2`` if none is (the model's context is larger than the probe)."""
    worst = 0
    for image in images:
        found = crop // 2
        for d, err in context_profile(model, image, crop, step):
            if err < tol:
                found = d
                break
        worst = max(worst, found)
    return worst
