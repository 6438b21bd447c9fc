"""Tests for the training losses: hand-computed values, masking, stability, autocast and CombinedLoss."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from napari_neuroedge.config import LossConfig
from napari_neuroedge.training.losses import (
    TERM_NAMES,
    CombinedLoss,
    bce_loss,
    dice_loss,
    edge_loss,
    focal_loss,
    skeleton_recall_loss,
    soft_f1_loss,
)

LOGITS_2X2 = [[2.0, -1.0], [0.5, -3.0]]
TARGET_2X2 = [[1.0, 0.0], [0.0, 1.0]]


def _t(values: list[list[float]]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 2, 2)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _bce(x: float, y: float) -> float:
    p = _sigmoid(x)
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def _focal(x: float, y: float, gamma: float, alpha: float) -> float:
    p = _sigmoid(x)
    pt = p if y == 1 else 1 - p
    at = alpha if y == 1 else 1 - alpha
    return -at * (1 - pt) ** gamma * math.log(pt)


def _pairs() -> list[tuple[float, float]]:
    return [(x, y) for row_x, row_y in zip(LOGITS_2X2, TARGET_2X2) for x, y in zip(row_x, row_y)]


# --------------------------------------------------------------------------------- hand-computed values
def test_bce_hand_computed() -> None:
    expected = sum(_bce(x, y) for x, y in _pairs()) / 4
    assert bce_loss(_t(LOGITS_2X2), _t(TARGET_2X2)).item() == pytest.approx(expected, rel=1e-6)


def test_weighted_bce_hand_computed() -> None:
    weights = [1.0, 2.0, 3.0, 4.0]
    expected = sum(w * _bce(x, y) for w, (x, y) in zip(weights, _pairs())) / 4
    out = bce_loss(_t(LOGITS_2X2), _t(TARGET_2X2), weight=_t([[1.0, 2.0], [3.0, 4.0]]))
    assert out.item() == pytest.approx(expected, rel=1e-6)


def test_focal_hand_computed() -> None:
    gamma, alpha = 2.0, 0.7
    expected = sum(_focal(x, y, gamma, alpha) for x, y in _pairs()) / 4
    out = focal_loss(_t(LOGITS_2X2), _t(TARGET_2X2), gamma=gamma, alpha=alpha)
    assert out.dtype == torch.float32 and out.ndim == 0
    assert out.item() == pytest.approx(expected, rel=1e-6)


def test_focal_gamma_zero_alpha_half_is_half_bce() -> None:
    out = focal_loss(_t(LOGITS_2X2), _t(TARGET_2X2), gamma=0.0, alpha=0.5)
    assert out.item() == pytest.approx(0.5 * sum(_bce(x, y) for x, y in _pairs()) / 4, rel=1e-6)


def test_mask_mean_is_over_labelled_pixels() -> None:
    mask = _t([[1.0, 0.0], [1.0, 1.0]])
    pairs = [p for i, p in enumerate(_pairs()) if i != 1]
    assert bce_loss(_t(LOGITS_2X2), _t(TARGET_2X2), mask=mask).item() == pytest.approx(
        sum(_bce(x, y) for x, y in pairs) / 3, rel=1e-6
    )
    assert focal_loss(_t(LOGITS_2X2), _t(TARGET_2X2), mask=mask).item() == pytest.approx(
        sum(_focal(x, y, 2.0, 0.7) for x, y in pairs) / 3, rel=1e-6
    )


def test_fully_masked_batch_gives_zero() -> None:
    zero = torch.zeros(1, 1, 2, 2)
    assert bce_loss(_t(LOGITS_2X2), _t(TARGET_2X2), mask=zero).item() == 0.0
    assert soft_f1_loss(_t(LOGITS_2X2), _t(TARGET_2X2), mask=zero).item() == 0.0


def test_edge_loss_hand_computed() -> None:
    logits = torch.zeros(1, 1, 2, 2)  # BCE = log 2 at every pixel
    target = _t([[1.0, 0.0], [0.0, 0.0]])
    band = _t([[0.0, 1.0], [0.0, 0.0]])
    out = edge_loss(logits, target, band, band_weight=4.0)
    assert out.item() == pytest.approx((3 + 4) * math.log(2) / 4, rel=1e-6)
    weight = _t([[2.0, 1.0], [1.0, 1.0]])
    out_w = edge_loss(logits, target, band, band_weight=4.0, weight=weight)
    assert out_w.item() == pytest.approx((2 + 4 + 1 + 1) * math.log(2) / 4, rel=1e-6)


def test_soft_f1_and_dice_hand_computed() -> None:
    logits = torch.zeros(1, 1, 2, 2)  # p = 0.5 everywhere
    target = _t([[1.0, 0.0], [0.0, 0.0]])
    # TP = 0.5, FP = 1.5, FN = 0.5: F1 = (1 + 1) / (1 + 1.5 + 0.5 + 1) = 0.5
    assert soft_f1_loss(logits, target, eps=1.0).item() == pytest.approx(0.5, rel=1e-6)
    # V-Net Dice: (2 * 0.5 + 1) / (4 * 0.25 + 1 + 1) = 2 / 3
    assert dice_loss(logits, target, eps=1.0).item() == pytest.approx(1.0 / 3.0, rel=1e-6)


def test_region_losses_exclude_masked_pixels_hand_computed() -> None:
    logits = torch.zeros(1, 1, 2, 2)  # p = 0.5
    target = _t([[1.0, 0.0], [0.0, 0.0]])
    mask = _t([[1.0, 1.0], [0.0, 0.0]])
    # labelled pixels only: TP = 0.5, FP = 0.5, FN = 0.5 -> F1 = 2 / 3
    assert soft_f1_loss(logits, target, mask=mask).item() == pytest.approx(1.0 / 3.0, rel=1e-6)
    # Dice: (2 * 0.5 + 1) / (2 * 0.25 + 1 + 1) = 0.8
    assert dice_loss(logits, target, mask=mask).item() == pytest.approx(0.2, rel=1e-6)
    # Skeleton Recall: tube pixel (1, 1) is ignored -> (0.5 * 2 + 1) / (2 + 1)
    tube = _t([[1.0, 1.0], [0.0, 1.0]])
    assert skeleton_recall_loss(logits, tube, mask=mask).item() == pytest.approx(1.0 / 3.0, rel=1e-6)
    # and a per-pixel weight counts each pixel that many times
    weight = _t([[3.0, 1.0], [1.0, 1.0]])
    # TP = 1.5, FP = 0.5, FN = 1.5: (3 + 1) / (3 + 0.5 + 1.5 + 1)
    assert soft_f1_loss(logits, target, mask=mask, weight=weight).item() == pytest.approx(1 - 4 / 6, rel=1e-6)


def test_soft_f1_perfect_and_all_wrong() -> None:
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(2, 1, 16, 16, generator=g) > 0.6).float()
    perfect = 20.0 * (2 * target - 1)
    assert soft_f1_loss(perfect, target).item() < 1e-3
    assert dice_loss(perfect, target).item() < 1e-3
    wrong = -perfect
    assert soft_f1_loss(wrong, target, eps=1e-6).item() > 0.999
    # with eps = 1 an all-wrong 16x16 image scores 1 - 1 / (256 + 1) (every pixel is an FP or an FN)
    one = torch.zeros(1, 1, 16, 16)
    one[..., :8, :] = 1.0
    assert soft_f1_loss(-20.0 * (2 * one - 1), one).item() == pytest.approx(1 - 1 / 257, abs=1e-5)


def test_region_losses_average_over_images_with_labelled_pixels() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 8, 8, generator=g)
    target = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    mask = torch.ones(2, 1, 8, 8)
    mask[1] = 0.0  # second image entirely ignored
    for fn in (soft_f1_loss, dice_loss):
        both = fn(logits, target, mask=mask).item()
        first = fn(logits[:1], target[:1]).item()
        assert both == pytest.approx(first, rel=1e-6)
    both = skeleton_recall_loss(logits, target, mask=mask).item()
    assert both == pytest.approx(skeleton_recall_loss(logits[:1], target[:1]).item(), rel=1e-6)


def test_skeleton_recall_hand_computed_and_empty_tube() -> None:
    logits = torch.zeros(2, 1, 4, 4)  # p = 0.5
    tube = torch.zeros(2, 1, 4, 4)
    tube[0, 0, 1, :] = 1.0  # 4 tube pixels in image 0, image 1 has none
    # image 0: 1 - (0.5 * 4 + 1) / (4 + 1) = 0.4; image 1 contributes 0; mean over both images
    assert skeleton_recall_loss(logits[:1], tube[:1]).item() == pytest.approx(0.4, rel=1e-6)
    assert skeleton_recall_loss(logits, tube).item() == pytest.approx(0.2, rel=1e-6)
    # predicting membrane everywhere on the tube gives full recall
    assert skeleton_recall_loss(torch.full((1, 1, 4, 4), 20.0), tube[:1]).item() < 1e-6
    # eps = 0 with an empty tube stays finite
    out = skeleton_recall_loss(logits.requires_grad_(), tube, eps=0.0)
    out.backward()
    assert out.item() == pytest.approx(0.25, rel=1e-6)
    assert torch.isfinite(logits.grad).all()


# ------------------------------------------------------------------------------------ mask and stability
def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (2, 1, 12, 12)
    return {
        "label": (torch.rand(shape, generator=g) > 0.7).float(),
        "mask": (torch.rand(shape, generator=g) > 0.3).float(),
        "weight": 0.5 + torch.rand(shape, generator=g) * 2,
        "tube": (torch.rand(shape, generator=g) > 0.8).float(),
        "band": (torch.rand(shape, generator=g) > 0.8).float(),
    }


LossFn = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]
ALL_LOSSES: dict[str, LossFn] = {
    "focal": lambda x, b: focal_loss(x, b["label"], mask=b["mask"], weight=b["weight"]),
    "focal_gamma_half": lambda x, b: focal_loss(x, b["label"], gamma=0.5, mask=b["mask"]),
    "bce": lambda x, b: bce_loss(x, b["label"], mask=b["mask"], weight=b["weight"]),
    "edge": lambda x, b: edge_loss(x, b["label"], b["band"], mask=b["mask"], weight=b["weight"]),
    "f1": lambda x, b: soft_f1_loss(x, b["label"], mask=b["mask"], weight=b["weight"]),
    "dice": lambda x, b: dice_loss(x, b["label"], mask=b["mask"], weight=b["weight"]),
    "skeleton": lambda x, b: skeleton_recall_loss(x, b["tube"], mask=b["mask"], weight=b["weight"]),
    "combined": lambda x, b: CombinedLoss(
        LossConfig(f1=1, focal=1, edge=1, skeleton_recall=1, weighted_bce=1, dice=1, bce=1)
    )(x, b)[0],
}


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_masked_pixels_change_neither_loss_nor_gradient(name: str) -> None:
    fn = ALL_LOSSES[name]
    batch = _batch()
    g = torch.Generator().manual_seed(2)
    base = torch.randn(2, 1, 12, 12, generator=g)
    ignored = batch["mask"] == 0
    wild = base.clone()
    wild[ignored] = torch.where(torch.rand(int(ignored.sum()), generator=g) > 0.5, 1e4, -1e4)
    # garbage targets / weights on ignored pixels must not matter either
    batch_wild = dict(batch)
    batch_wild["label"] = torch.where(ignored, torch.full_like(batch["label"], 7.0), batch["label"])
    batch_wild["weight"] = torch.where(ignored, torch.full_like(batch["weight"], 1e6), batch["weight"])

    grads, values = [], []
    for logits, b in ((base, batch), (wild, batch_wild)):
        x = logits.clone().requires_grad_()
        loss = fn(x, b)
        loss.backward()
        values.append(loss.item())
        grads.append(x.grad)
    assert values[0] == pytest.approx(values[1], rel=1e-6, abs=1e-7)
    assert torch.isfinite(grads[1]).all()
    assert torch.all(grads[1][ignored] == 0)
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0][~ignored].abs().sum() > 0  # labelled pixels do get a gradient


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_extreme_logits_are_finite(name: str) -> None:
    batch = _batch(3)
    batch.pop("mask")
    g = torch.Generator().manual_seed(4)
    x = (1e4 * (2 * torch.rand(2, 1, 12, 12, generator=g) - 1)).requires_grad_()
    loss = ALL_LOSSES[name](x, {**batch, "mask": torch.ones_like(x)})
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_confidently_wrong_bce_is_large_not_inf() -> None:
    out = bce_loss(torch.full((1, 1, 2, 2), -100.0), torch.ones(1, 1, 2, 2))
    assert out.item() == pytest.approx(100.0, rel=1e-4)


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_losses_under_cpu_autocast_are_float32(name: str) -> None:
    batch = _batch(5)
    logits = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(6)).bfloat16()
    reference = ALL_LOSSES[name](logits.float(), batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ALL_LOSSES[name](logits, batch)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_losses_under_cuda_autocast() -> None:
    batch = {k: v.cuda() for k, v in _batch(7).items()}
    conv = torch.nn.Conv2d(1, 1, 3, padding=1).cuda()
    image = torch.randn(2, 1, 12, 12, device="cuda")
    loss_fn = CombinedLoss(LossConfig(**{name: 1.0 for name in TERM_NAMES}))
    with torch.autocast("cuda", dtype=torch.float16):
        logits = conv(image)
        assert logits.dtype == torch.float16
        total, terms = loss_fn(logits, batch)
    assert total.dtype == torch.float32 and math.isfinite(total.item())
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())
    reference, _ = loss_fn(logits.float(), batch)
    assert total.item() == pytest.approx(reference.item(), rel=1e-5)


# ------------------------------------------------------------------------------------------ CombinedLoss
def test_combined_default_terms_and_total() -> None:
    batch = _batch(8)
    batch.pop("weight")
    logits = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(9))
    loss_fn = CombinedLoss()  # default LossConfig: f1 0.5 + focal 0.5
    total, terms = loss_fn(logits, batch)
    assert set(terms) == {"f1", "focal"}
    f1 = soft_f1_loss(logits, batch["label"], mask=batch["mask"]).item()
    focal = focal_loss(logits, batch["label"], gamma=2.0, alpha=0.7, mask=batch["mask"]).item()
    assert terms["f1"] == pytest.approx(f1, rel=1e-6)
    assert terms["focal"] == pytest.approx(focal, rel=1e-6)
    assert total.item() == pytest.approx(0.5 * f1 + 0.5 * focal, rel=1e-6)


def test_combined_term_dict_has_exactly_the_nonzero_terms() -> None:
    batch = _batch(10)
    logits = torch.randn(2, 1, 12, 12)
    cfg = LossConfig(f1=0, focal=0, edge=2.0, skeleton_recall=0.3, weighted_bce=0, dice=1.0, bce=0)
    total, terms = CombinedLoss(cfg)(logits, batch)
    assert set(terms) == {"edge", "skeleton_recall", "dice"}
    expected = 2.0 * terms["edge"] + 0.3 * terms["skeleton_recall"] + terms["dice"]
    assert total.item() == pytest.approx(expected, rel=1e-6)
    all_on = LossConfig(**{name: 1.0 for name in TERM_NAMES})
    assert set(CombinedLoss(all_on)(logits, batch)[1]) == set(TERM_NAMES)


def test_combined_weight_multiplies_pixel_terms() -> None:
    batch = _batch(11)
    logits = torch.randn(2, 1, 12, 12)
    cfg = LossConfig(f1=1.0, focal=1.0, weighted_bce=1.0, bce=1.0, edge=1.0)
    _, terms = CombinedLoss(cfg)(logits, batch)
    kw = {"mask": batch["mask"], "weight": batch["weight"]}
    assert terms["focal"] == pytest.approx(focal_loss(logits, batch["label"], **kw).item(), rel=1e-6)
    assert terms["weighted_bce"] == pytest.approx(bce_loss(logits, batch["label"], **kw).item(), rel=1e-6)
    edge = edge_loss(logits, batch["label"], batch["band"], **kw).item()
    assert terms["edge"] == pytest.approx(edge, rel=1e-6)
    # the region term ignores the weight map
    f1 = soft_f1_loss(logits, batch["label"], mask=batch["mask"]).item()
    assert terms["f1"] == pytest.approx(f1, rel=1e-6)
    unweighted = bce_loss(logits, batch["label"], mask=batch["mask"]).item()
    assert terms["bce"] != pytest.approx(unweighted, rel=1e-3)


def test_combined_lowers_as_prediction_approaches_target() -> None:
    batch = _batch(12)
    loss_fn = CombinedLoss(LossConfig(f1=0.5, focal=0.5, edge=0.2, skeleton_recall=0.2, dice=0.1, bce=0.1))
    noise = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(13))
    signed = 2 * batch["label"] - 1
    totals = [loss_fn(noise + s * 4.0 * signed, batch)[0].item() for s in (-1.0, 0.0, 0.5, 1.0, 2.0)]
    assert all(a > b for a, b in zip(totals, totals[1:])), totals


def test_combined_missing_key_names_key_and_field() -> None:
    batch = _batch(14)
    logits = torch.zeros(2, 1, 12, 12)
    no_tube = {k: v for k, v in batch.items() if k != "tube"}
    with pytest.raises(KeyError, match=r"tube.*skeleton_recall"):
        CombinedLoss(LossConfig(skeleton_recall=1.0))(logits, no_tube)
    no_weight = {k: v for k, v in batch.items() if k != "weight"}
    with pytest.raises(KeyError, match=r"weight.*weighted_bce"):
        CombinedLoss(LossConfig(weighted_bce=1.0))(logits, no_weight)
    no_band = {k: v for k, v in batch.items() if k != "band"}
    with pytest.raises(KeyError, match=r"band.*edge"):
        CombinedLoss(LossConfig(edge=1.0))(logits, no_band)
    with pytest.raises(KeyError, match=r"label.*f1"):
        CombinedLoss()(logits, {"mask": batch["mask"]})
    # only the enabled terms' keys are needed: no tube / band / weight / mask for the default config
    total, _ = CombinedLoss()(logits, {"label": batch["label"]})
    assert math.isfinite(total.item())


def test_combined_rejects_bad_configs() -> None:
    zeros = LossConfig(f1=0, focal=0)
    with pytest.raises(ValueError):
        CombinedLoss(zeros)
    with pytest.raises(ValueError):
        CombinedLoss(LossConfig(f1=-1.0))
