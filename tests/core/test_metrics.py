"""Tests for membrane / instance metrics, with hand-computed toy cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_neuroedge.metrics import (
    boundary_prf,
    default_instances,
    evaluate,
    instances_from_membrane,
    pixel_error,
    rand_error,
    to_membrane,
    variation_of_information,
)


def _grid_membrane(h: int = 20, w: int = 20, rows=(5, 12), cols=(7, 14)) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    for r in rows:
        m[r, :] = 1
    for c in cols:
        m[:, c] = 1
    return m


def _two_cells() -> np.ndarray:
    """3 x 5 GT: a vertical membrane line at x = 2 separating two 3 x 2 cells."""
    gt = np.zeros((3, 5), np.uint8)
    gt[:, 2] = 1
    return gt


# ------------------------------------------------------------------------------------------ pixel error


def test_pixel_error_counts_differences() -> None:
    gt = _grid_membrane()
    assert pixel_error(gt, gt) == 0.0
    pred = gt.copy()
    pred[0, 0] = 1
    pred[5, 3] = 0
    assert pixel_error(pred, gt) == pytest.approx(2 / 400)


def test_pixel_error_mask_ignores_masked_pixels() -> None:
    gt = np.zeros((4, 5), np.uint8)
    pred = gt.copy()
    pred[0, 0] = 1  # wrong, but masked out
    pred[3, 4] = 1  # wrong and labelled
    mask = np.ones_like(gt)
    mask[0, :] = 0  # 15 labelled pixels remain
    assert pixel_error(pred, gt, mask=mask) == pytest.approx(1 / 15)
    mask[3, 4] = 0
    assert pixel_error(pred, gt, mask=mask) == 0.0
    assert pixel_error(pred, gt, mask=np.zeros_like(gt)) == 0.0


# ---------------------------------------------------------------------------------------- boundary P/R


def test_boundary_prf_perfect_and_both_empty() -> None:
    gt = _grid_membrane()
    assert boundary_prf(gt, gt, tolerance=0) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    empty = np.zeros_like(gt)
    assert boundary_prf(empty, empty) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert boundary_prf(empty, gt) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert boundary_prf(gt, empty) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_boundary_prf_shift_by_one_pixel() -> None:
    gt = _grid_membrane(cols=(7, 14))
    pred = _grid_membrane(cols=(8, 15))  # the vertical lines moved right by 1 px
    assert boundary_prf(pred, gt, tolerance=2.0)["f1"] == 1.0
    assert boundary_prf(pred, gt, tolerance=1.0)["f1"] == 1.0
    exact = boundary_prf(pred, gt, tolerance=0.0)
    # 76 membrane pixels each; the two full rows (40 px) coincide, the 2 x 18 column pixels do not.
    assert exact["precision"] == pytest.approx(40 / 76)
    assert exact["recall"] == pytest.approx(40 / 76)
    assert exact["f1"] == pytest.approx(40 / 76)
    assert exact["f1"] < 1.0


def test_boundary_prf_tolerance_is_euclidean() -> None:
    gt = np.zeros((10, 10), np.uint8)
    gt[2, 2] = 1
    pred = np.zeros_like(gt)
    pred[3, 3] = 1  # distance sqrt(2) = 1.414
    assert boundary_prf(pred, gt, tolerance=1.0)["f1"] == 0.0
    assert boundary_prf(pred, gt, tolerance=1.5)["f1"] == 1.0
    pred[2, 6] = 1  # distance 4: a false positive at tolerance 2
    r = boundary_prf(pred, gt, tolerance=2.0)
    assert r["precision"] == pytest.approx(0.5) and r["recall"] == 1.0
    assert r["f1"] == pytest.approx(2 * 0.5 / 1.5)


def test_boundary_prf_stack_sums_counts_over_slices() -> None:
    gt0 = _grid_membrane()  # 76 px
    gt1 = _grid_membrane(rows=(3,), cols=())  # 20 px, missed entirely
    gt = np.stack([gt0, gt1])
    pred = np.stack([gt0, np.zeros_like(gt1)])
    r = boundary_prf(pred, gt, tolerance=2.0)
    assert r["precision"] == 1.0
    assert r["recall"] == pytest.approx(76 / 96)
    # No distance leaks across slices: a GT line in slice 1 does not match predictions in slice 0.
    pred2 = np.stack([gt1, gt0])
    assert boundary_prf(pred2, gt, tolerance=2.0)["precision"] < 1.0


# ------------------------------------------------------------------------------------------- instances


def test_instances_from_membrane_four_connectivity_and_unique_ids() -> None:
    m = np.eye(4, dtype=np.uint8)  # a diagonal line separates the corners under 4-connectivity
    inst = instances_from_membrane(m)
    assert inst.dtype == np.uint32
    assert np.all(inst[m == 1] == 0)
    assert len(np.unique(inst[m == 0])) == 2
    stack = instances_from_membrane(np.stack([m, _grid_membrane(4, 4, rows=(), cols=(1,))]))
    assert stack.shape == (2, 4, 4)
    ids0 = set(np.unique(stack[0])) - {0}
    ids1 = set(np.unique(stack[1])) - {0}
    assert ids0 == {1, 2} and ids1 == {3, 4}


def test_default_instances_fills_membrane_with_nearest_cell() -> None:
    inst = default_instances(_two_cells().astype(np.float32))
    assert inst.dtype == np.uint32 and np.all(inst > 0)
    assert len(np.unique(inst[:, :2])) == 1 and len(np.unique(inst[:, 3:])) == 1
    assert inst[0, 0] != inst[0, 4]
    assert np.all(default_instances(np.ones((3, 3), np.float32)) == 0)


# --------------------------------------------------------------------------------------- Rand and VI


def test_rand_error_perfect_is_zero() -> None:
    gt_inst = instances_from_membrane(_grid_membrane())
    assert rand_error(gt_inst, gt_inst) == pytest.approx(0.0)
    relabelled = np.where(gt_inst > 0, gt_inst + 100, 0)
    assert rand_error(relabelled, gt_inst) == pytest.approx(0.0)


def test_rand_error_merge_hand_computed() -> None:
    """Removing the line merges two 6-px cells. On the 12 GT-foreground pixels (pair counting, self-pairs
    excluded): sum n_ij(n_ij-1) = 2*30 = 60, GT sum t(t-1) = 60, pred sum s(s-1) = 12*11 = 132.
    Adapted Rand F = 60 / (0.5*132 + 0.5*60) = 0.625, error = 0.375."""
    gt_inst = instances_from_membrane(_two_cells())
    merged = np.ones((3, 5), np.uint32)  # prediction without the separating line: one cell
    assert rand_error(merged, gt_inst) == pytest.approx(0.375)
    # The same via the membrane prediction that lacks the line.
    assert rand_error(instances_from_membrane(np.zeros((3, 5), np.uint8)), gt_inst) == pytest.approx(0.375)
    # Stack: slice 0 perfect, slice 1 merged -> average 0.1875.
    stack_gt = instances_from_membrane(np.stack([_two_cells(), _two_cells()]))
    stack_pred = np.stack([stack_gt[0], np.ones((3, 5), np.uint32)])
    assert rand_error(stack_pred, stack_gt) == pytest.approx(0.1875)


def test_variation_of_information_merge_and_split() -> None:
    gt_inst = instances_from_membrane(_two_cells())
    merged = variation_of_information(np.ones((3, 5), np.uint32), gt_inst)
    # Two equal GT cells inside one predicted cell: H(gt | pred) = 1 bit, H(pred | gt) = 0.
    assert merged["merge"] == pytest.approx(1.0)
    assert merged["split"] == pytest.approx(0.0)
    assert merged["total"] == pytest.approx(1.0)
    # A split: one 4 x 4 GT cell cut into two 8-px halves.
    gt = np.ones((4, 4), np.uint32)
    pred = np.ones((4, 4), np.uint32)
    pred[:, 2:] = 2
    split = variation_of_information(pred, gt)
    assert split["split"] == pytest.approx(1.0) and split["merge"] == pytest.approx(0.0)
    # GT background (0) is ignored: extra predicted labels there cost nothing.
    gt_bg = gt.copy()
    gt_bg[0, :] = 0
    pred_bg = np.ones((4, 4), np.uint32)
    pred_bg[0, :] = 7
    assert variation_of_information(pred_bg, gt_bg)["total"] == pytest.approx(0.0)


# -------------------------------------------------------------------------------------------- evaluate


def test_to_membrane_threshold_and_binary() -> None:
    prob = np.array([[0.49, 0.5, 0.9]], np.float32)
    np.testing.assert_array_equal(to_membrane(prob), [[False, True, True]])
    np.testing.assert_array_equal(to_membrane(np.array([[0, 1, 255]], np.uint8)), [[False, True, True]])


def test_evaluate_perfect_prediction() -> None:
    gt = _grid_membrane(24, 24, rows=(6, 15), cols=(9, 17))
    for pred in (gt.astype(np.float32) * 0.9 + 0.05, gt.copy(), gt.astype(bool)):
        r = evaluate(pred, gt)
        assert r["pixel_error"] == 0.0
        assert r["boundary_f1"] == 1.0 and r["boundary_f1_exact"] == 1.0
        assert r["rand_error"] == pytest.approx(0.0)
        assert r["vi_split"] == pytest.approx(0.0) and r["vi_merge"] == pytest.approx(0.0)
    stack = evaluate(np.stack([gt, gt]).astype(np.float32), np.stack([gt, gt]))
    assert stack["pixel_error"] == 0.0 and stack["rand_error"] == pytest.approx(0.0)


def test_evaluate_merged_toy_case() -> None:
    gt = _two_cells()
    r = evaluate(np.zeros((3, 5), np.float32), gt)
    assert r["pixel_error"] == pytest.approx(3 / 15)
    assert r["boundary_precision"] == 0.0 and r["boundary_recall"] == 0.0 and r["boundary_f1"] == 0.0
    assert r["rand_error"] == pytest.approx(0.375)
    assert r["vi_merge"] == pytest.approx(1.0) and r["vi_split"] == pytest.approx(0.0)


def test_evaluate_shifted_membrane_and_custom_instances_fn() -> None:
    gt = _grid_membrane()
    pred = _grid_membrane(cols=(8, 15)).astype(np.float32)
    calls: list[tuple[tuple[int, ...], np.dtype]] = []

    def inst_fn(prob2d: np.ndarray) -> np.ndarray:
        calls.append((prob2d.shape, prob2d.dtype))
        return instances_from_membrane(prob2d >= 0.5)

    r = evaluate(pred, gt, instances_fn=inst_fn, tolerance=2.0)
    assert calls == [((20, 20), np.dtype(np.float32))]
    assert r["boundary_f1"] == 1.0
    assert r["boundary_f1_exact"] == pytest.approx(40 / 76)
    assert r["pixel_error"] == pytest.approx(72 / 400)  # 36 px added + 36 px missing
    assert 0.0 < r["rand_error"] < 1.0
    expected_keys = {
        "pixel_error", "boundary_precision", "boundary_recall", "boundary_f1", "boundary_precision_exact",
        "boundary_recall_exact", "boundary_f1_exact", "rand_error", "vi_split", "vi_merge", "vi_total",
    }
    assert set(r) == expected_keys
    assert all(isinstance(v, float) for v in r.values())


def test_shape_mismatch_rejected() -> None:
    with pytest.raises(ValueError):
        evaluate(np.zeros((4, 4), np.float32), np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError):
        boundary_prf(np.zeros((2, 2, 2, 2)), np.zeros((2, 2, 2, 2)))


ISBI_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "isbi2012"


@pytest.mark.isbi
def test_evaluate_on_isbi_labels_crop() -> None:
    labels_path = ISBI_DIR / "train-labels.tif"
    if not labels_path.exists():
        pytest.skip(f"ISBI 2012 data not found at {ISBI_DIR}")
    tifffile = pytest.importorskip("tifffile")
    gt = (tifffile.imread(labels_path)[0, :128, :128] == 0).astype(np.uint8)  # 0 = membrane in the file
    perfect = evaluate(gt, gt)
    assert perfect["pixel_error"] == 0.0 and perfect["boundary_f1_exact"] == 1.0
    assert perfect["rand_error"] == pytest.approx(0.0) and perfect["vi_total"] == pytest.approx(0.0)
    thick = ndimage.binary_dilation(gt).astype(np.uint8)  # membranes 1 px thicker on each side
    r = evaluate(thick, gt)
    assert r["boundary_f1"] == 1.0
    assert r["boundary_recall_exact"] == 1.0 and r["boundary_precision_exact"] < 0.95
    assert r["pixel_error"] == pytest.approx(float((thick != gt).mean()))
    assert r["rand_error"] < 0.05  # same cells, just thinner


def test_instance_scores_of_a_binary_map_ignore_the_probability_threshold() -> None:
    """A 0/1 map is its own threshold: uint8, bool and 0/1 float give the same components at any threshold."""
    from napari_neuroedge.metrics import instance_scores

    gt = np.zeros((2, 24, 24), np.uint8)
    gt[:, 11:13, :] = 1
    gt[:, :, 11:13] = 1
    pred = gt.copy()
    pred[0, 11:13, 3] = 0  # a gap: two GT cells merge in slice 0
    want = instance_scores(pred.astype(np.float32), gt)
    assert want["rand_error"] > 0.1 and want["vi_merge"] > 0
    for p, t in ((pred, 0.5), (pred, 0.9), (pred, 1.5), (pred.astype(bool), 0.0)):
        assert instance_scores(p, gt, threshold=t) == want
    assert evaluate(pred, gt, threshold=1.5)["rand_error"] == want["rand_error"]
