"""Training losses for membrane (boundary) segmentation.

Every loss takes ``logits`` (N, 1, H, W) and a float {0, 1} ``target`` of the same shape (membrane = 1),
plus an optional ignore ``mask`` (1 = labelled, 0 = ignore) and an optional per-pixel ``weight`` map, both
broadcastable to the logits, and returns a float32 scalar tensor. Ignored pixels contribute nothing to the
value or the gradient: their logits are replaced by 0 before any maths (so even extreme values there cannot
leak NaN/inf into the gradient), and pixel-mean losses divide by the number of labelled pixels. Everything is
computed in float32 from the logits (``logsigmoid`` / ``binary_cross_entropy_with_logits``), so the losses are
safe under ``torch.autocast``.

Reductions:
- pixel losses (focal, BCE, edge): sum over labelled pixels of weight * loss, divided by the number of
  labelled pixels in the batch (a batch with none gives 0);
- region losses (soft F1, Dice, Skeleton Recall): computed per image, then averaged over the images that
  have at least one labelled pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import LossConfig

__all__ = [
    "focal_loss",
    "soft_f1_loss",
    "dice_loss",
    "bce_loss",
    "edge_loss",
    "skeleton_recall_loss",
    "CombinedLoss",
    "TERM_NAMES",
]

_SPATIAL = (1, 2, 3)


def _prepare(
    logits: Tensor, target: Tensor, mask: Tensor | None, weight: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """float32 logits / target, binary mask (None = all labelled), float32 weight; masked logits -> 0."""
    if logits.ndim != 4:
        raise ValueError(f"logits must be (N, 1, H, W), got shape {tuple(logits.shape)}")
    if target.shape != logits.shape:
        raise ValueError(f"target shape {tuple(target.shape)} != logits shape {tuple(logits.shape)}")
    x = logits.float()
    y = target.to(device=x.device, dtype=torch.float32)
    m = None
    if mask is not None:
        m = (mask.to(x.device) > 0).float().expand_as(x)
        keep = m > 0
        x = torch.where(keep, x, torch.zeros_like(x))
        y = torch.where(keep, y, torch.zeros_like(y))
    w = None
    if weight is not None:
        w = weight.to(device=x.device, dtype=torch.float32).expand_as(x)
        if m is not None:
            w = torch.where(m > 0, w, torch.zeros_like(w))
    return x, y, m, w


def _pixel_mean(per_pixel: Tensor, m: Tensor | None, w: Tensor | None) -> Tensor:
    """sum(mask * weight * per_pixel) / number of labelled pixels (0 when there are none)."""
    if w is not None:
        per_pixel = per_pixel * w
    if m is None:
        return per_pixel.mean()
    return (per_pixel * m).sum() / m.sum().clamp_min(1.0)


def _image_mean(per_image: Tensor, m: Tensor | None) -> Tensor:
    """Mean of (N,) per-image losses over the images with at least one labelled pixel."""
    if m is None:
        return per_image.mean()
    valid = (m.sum(dim=_SPATIAL) > 0).float()
    return (per_image * valid).sum() / valid.sum().clamp_min(1.0)


def _pixel_weights(m: Tensor | None, w: Tensor | None) -> Tensor | None:
    """Combined mask * weight for the soft-count losses (None = all ones)."""
    if m is None:
        return w
    return m if w is None else m * w


def focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: float = 0.7,
    mask: Tensor | None = None,
    weight: Tensor | None = None,
) -> Tensor:
    """Binary focal loss (Lin et al. 2017): -alpha_t * (1 - p_t)^gamma * log(p_t), pixel mean.

    alpha weights the membrane (positive) class, 1 - alpha the rest. Targets must be {0, 1}.
    """
    x, y, m, w = _prepare(logits, target, mask, weight)
    z = x * (2.0 * y - 1.0)  # logit of p_t
    log_pt = F.logsigmoid(z)
    modulator = torch.exp(gamma * F.logsigmoid(-z))  # (1 - p_t)^gamma, finite gradient for any gamma >= 0
    alpha_t = alpha * y + (1.0 - alpha) * (1.0 - y)
    return _pixel_mean(-alpha_t * modulator * log_pt, m, w)


def bce_loss(
    logits: Tensor, target: Tensor, mask: Tensor | None = None, weight: Tensor | None = None
) -> Tensor:
    """Binary cross-entropy, pixel mean; with ``weight`` (e.g. the U-Net weight map) it is weighted BCE."""
    x, y, m, w = _prepare(logits, target, mask, weight)
    return _pixel_mean(F.binary_cross_entropy_with_logits(x, y, reduction="none"), m, w)


def edge_loss(
    logits: Tensor,
    target: Tensor,
    band: Tensor,
    band_weight: float = 4.0,
    mask: Tensor | None = None,
    weight: Tensor | None = None,
) -> Tensor:
    """BCE whose pixels in ``band`` (near but not on the true edge, see ``targets.edge_band``) weigh
    ``band_weight`` instead of 1; pixel mean over labelled pixels (times ``weight`` where given)."""
    x, y, m, w = _prepare(logits, target, mask, weight)
    b = (band.to(x.device) > 0).float().expand_as(x)
    band_w = 1.0 + (band_weight - 1.0) * b
    w = band_w if w is None else w * band_w
    return _pixel_mean(F.binary_cross_entropy_with_logits(x, y, reduction="none"), m, w)


def soft_f1_loss(
    logits: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    weight: Tensor | None = None,
    eps: float = 1.0,
) -> Tensor:
    """1 - soft F1 of the membrane class, per image: F1 = (2 TP + eps) / (2 TP + FP + FN + eps).

    TP = sum(p y), FP = sum(p (1 - y)), FN = sum((1 - p) y) from probabilities p (each pixel times its
    weight); averaged over the images with labelled pixels. An image with no membrane predicted or true
    scores 0.
    """
    x, y, m, w = _prepare(logits, target, mask, weight)
    p = torch.sigmoid(x)
    pw = _pixel_weights(m, w)
    if pw is not None:
        p_w, y_w = p * pw, y * pw
    else:
        p_w, y_w = p, y
    tp = (p_w * y).sum(dim=_SPATIAL)
    denom = p_w.sum(dim=_SPATIAL) + y_w.sum(dim=_SPATIAL)  # = 2 TP + FP + FN
    f1 = (2.0 * tp + eps) / (denom + eps).clamp_min(1e-12)
    return _image_mean(1.0 - f1, m)


def dice_loss(
    logits: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    weight: Tensor | None = None,
    eps: float = 1.0,
) -> Tensor:
    """1 - soft Dice in the V-Net form (Milletari et al. 2016), per image:
    (2 sum(p y) + eps) / (sum(p^2) + sum(y^2) + eps), averaged over the images with labelled pixels.

    Unlike :func:`soft_f1_loss` (linear denominator) the squared denominator rewards confident predictions.
    """
    x, y, m, w = _prepare(logits, target, mask, weight)
    p = torch.sigmoid(x)
    pw = _pixel_weights(m, w)
    ones = torch.ones_like(p) if pw is None else pw
    inter = (ones * p * y).sum(dim=_SPATIAL)
    denom = (ones * p * p).sum(dim=_SPATIAL) + (ones * y * y).sum(dim=_SPATIAL)
    dice = (2.0 * inter + eps) / (denom + eps).clamp_min(1e-12)
    return _image_mean(1.0 - dice, m)


def skeleton_recall_loss(
    logits: Tensor,
    tube: Tensor,
    mask: Tensor | None = None,
    eps: float = 1.0,
    *,
    weight: Tensor | None = None,
) -> Tensor:
    """Skeleton Recall (Kirchhoff et al. 2024): 1 - (sum(p tube) + eps) / (sum(tube) + eps) per image.

    tube: the dilated membrane skeleton (``targets.skeleton_tube``), (N, 1, H, W) in {0, 1}. Images whose
    (labelled part of the) tube is empty contribute 0; averaged over the images with labelled pixels.
    """
    x, t, m, w = _prepare(logits, tube, mask, weight)
    p = torch.sigmoid(x)
    pw = _pixel_weights(m, w)
    t_w = t if pw is None else t * pw
    tube_sum = t_w.sum(dim=_SPATIAL)
    recall = ((p * t_w).sum(dim=_SPATIAL) + eps) / (tube_sum + eps).clamp_min(1e-12)
    per_image = torch.where(tube_sum > 0, 1.0 - recall, torch.zeros_like(recall))
    return _image_mean(per_image, m)


# LossConfig field -> batch keys the term needs (besides the optional "mask").
TERM_NAMES: tuple[str, ...] = ("f1", "focal", "edge", "skeleton_recall", "weighted_bce", "dice", "bce")
_REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "f1": ("label",),
    "focal": ("label",),
    "edge": ("label", "band"),
    "skeleton_recall": ("tube",),
    "weighted_bce": ("label", "weight"),
    "dice": ("label",),
    "bce": ("label",),
}


class CombinedLoss(torch.nn.Module):
    """Weighted sum of the terms enabled in a :class:`LossConfig` (a term with weight 0 is not computed).

    The batch dict holds "label" (N, 1, H, W) float {0, 1} and, as the enabled terms need them, "mask"
    (1 = labelled), "weight" (per-pixel weight map: U-Net map and/or fine-tuning boost; multiplies the
    per-pixel terms of focal / bce / edge and is required by weighted_bce), "tube" (skeleton tube) and
    "band" (edge band). The logged term values are the unweighted terms; total = sum(weight_i * term_i).
    """

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else LossConfig()
        weights = {name: float(getattr(self.config, name)) for name in TERM_NAMES}
        negative = [n for n, v in weights.items() if v < 0]
        if negative:
            raise ValueError(f"LossConfig weights must be >= 0, got negative {negative}")
        self.weights: dict[str, float] = {n: v for n, v in weights.items() if v > 0}
        if not self.weights:
            raise ValueError("LossConfig enables no loss term (all weights are 0)")

    @property
    def terms(self) -> tuple[str, ...]:
        """Names (LossConfig fields) of the enabled terms."""
        return tuple(self.weights)

    def required_keys(self) -> set[str]:
        """Batch keys the enabled terms need ("mask" and "weight" are optional unless listed)."""
        return {key for name in self.weights for key in _REQUIRED_KEYS[name]}

    @staticmethod
    def _get(batch: dict[str, Tensor], key: str, term: str) -> Tensor:
        value = batch.get(key)
        if value is None:
            raise KeyError(f"batch has no {key!r}, which LossConfig.{term} > 0 needs")
        return value

    def forward(self, logits: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """logits (N, 1, H, W) -> (float32 scalar total, {term name: unweighted float value})."""
        cfg = self.config
        for name in self.weights:
            for key in _REQUIRED_KEYS[name]:
                self._get(batch, key, name)
        mask = batch.get("mask")
        weight = batch.get("weight")
        label = batch.get("label")
        values: dict[str, Tensor] = {}
        for name in self.weights:
            if name == "f1":
                values[name] = soft_f1_loss(logits, label, mask=mask)
            elif name == "focal":
                values[name] = focal_loss(
                    logits, label, gamma=cfg.focal_gamma, alpha=cfg.focal_alpha, mask=mask, weight=weight
                )
            elif name == "edge":
                values[name] = edge_loss(
                    logits, label, batch["band"], band_weight=cfg.edge_band_weight, mask=mask, weight=weight
                )
            elif name == "skeleton_recall":
                values[name] = skeleton_recall_loss(logits, batch["tube"], mask=mask)
            elif name == "weighted_bce":
                values[name] = bce_loss(logits, label, mask=mask, weight=batch["weight"])
            elif name == "dice":
                values[name] = dice_loss(logits, label, mask=mask)
            elif name == "bce":
                values[name] = bce_loss(logits, label, mask=mask, weight=weight)
        total = logits.new_zeros((), dtype=torch.float32)
        for name, value in values.items():
            total = total + self.weights[name] * value
        return total, {n: float(v.detach()) for n, v in values.items()}
