"""Post-processing: membrane labels and watershed instances from a boundary probability."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_neuroedge.cli import main
from napari_neuroedge.config import SEED_THRESHOLD
from napari_neuroedge.inference.postprocess import instances_from_probability, membrane_from_probability


def _two_cells(membrane_prob: float, gap: tuple[int, int] | None = None) -> np.ndarray:
    """(64, 64) probability: two cells (0.05) left and right of a 2 px vertical membrane at x = 31-32."""
    prob = np.full((64, 64), 0.05, np.float32)
    prob[:, 31:33] = membrane_prob
    if gap is not None:
        prob[gap[0]:gap[1], 31:33] = 0.05
    return prob


def _assert_split_at_the_membrane(cells: np.ndarray) -> None:
    assert len(np.unique(cells)) == 2
    left, right = np.unique(cells[:, :31]), np.unique(cells[:, 33:])
    assert len(left) == 1 and len(right) == 1 and left[0] != right[0]


def test_a_faint_membrane_below_the_label_threshold_still_separates_cells():
    prob = _two_cells(0.4)
    assert not membrane_from_probability(prob, 0.5).any()  # no membrane label at the 0.5 threshold ...
    _assert_split_at_the_membrane(instances_from_probability(prob))  # ... but the cells stay apart
    assert SEED_THRESHOLD < 0.4
    # seeding at the membrane threshold instead grows one seed through the faint membrane
    assert len(np.unique(instances_from_probability(prob, seed_threshold=0.5))) == 1


def test_gaps_narrower_than_2_seed_distance_minus_1_do_not_merge_cells():
    for sd in (2.0, 3.0):
        safe = int(2 * sd - 2)  # widest gap that keeps the cells apart
        kept = instances_from_probability(_two_cells(0.9, gap=(30, 30 + safe)), seed_distance=sd)
        _assert_split_at_the_membrane(kept)
        merged = instances_from_probability(_two_cells(0.9, gap=(30, 31 + safe)), seed_distance=sd)
        assert len(np.unique(merged)) == 1


def test_instances_need_a_2d_map_and_fill_every_pixel():
    with pytest.raises(ValueError, match="2D"):
        instances_from_probability(np.zeros((2, 8, 8), np.float32))
    cells = instances_from_probability(_two_cells(0.9))
    assert cells.dtype == np.uint32 and cells.min() == 1  # membranes are assigned to a cell too
    assert np.array_equal(instances_from_probability(np.ones((16, 16), np.float32)), np.ones((16, 16), np.uint32))


def test_evaluate_cli_seed_threshold(tmp_path, capsys):
    prob = _two_cells(0.4)
    gt = np.zeros((64, 64), np.uint8)
    gt[:, 31:33] = 1
    tifffile.imwrite(tmp_path / "p.tif", prob)
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    assert main(["evaluate", str(tmp_path / "p.tif"), str(tmp_path / "gt.tif")]) == 0
    assert json.loads(capsys.readouterr().out)["rand_error"] == pytest.approx(0.0, abs=1e-9)
    assert main(["evaluate", str(tmp_path / "p.tif"), str(tmp_path / "gt.tif"), "--seed-threshold", "0.5"]) == 0
    assert json.loads(capsys.readouterr().out)["rand_error"] > 0.3  # the two cells merged


def test_stack_instance_ids_unique_in_any_order_and_widen():
    from napari_neuroedge.inference.postprocess import instance_dtype, stack_instance_ids

    cells = np.arange(1, 17, dtype=np.uint32).reshape(4, 4)  # 16 cells: as many as pixels
    shape = (3, 4, 4)
    ids = [stack_instance_ids(cells, z, shape) for z in (2, 0, 1)]  # any order, same ids
    flat = np.concatenate([i.ravel() for i in ids])
    assert len(np.unique(flat)) == 48 and flat.dtype == np.uint32
    np.testing.assert_array_equal(stack_instance_ids(cells, 1, shape), cells + 16)
    assert stack_instance_ids(np.zeros((4, 4), np.uint32), 2, shape).max() == 0  # background stays 0
    assert instance_dtype((300, 4096, 4096)) == np.uint64  # 5e9 possible ids: uint32 could collide
    big = stack_instance_ids(np.ones((4, 4), np.uint32), 299, (300, 4096, 4096))
    assert big.dtype == np.uint64 and int(big[0, 0]) == 299 * 4096 * 4096 + 1


def test_cli_instances_use_the_stack_id_scheme(tmp_path):
    from napari_neuroedge.io.sample import synthetic_em

    stack = synthetic_em((3, 64, 64), cell_size=20, seed=0)
    tifffile.imwrite(tmp_path / "s.tif", stack.image)
    assert main(["predict", str(tmp_path / "s.tif"), "-o", str(tmp_path / "m.tif"), "--slices", "1:3", "--prob",
                 str(tmp_path / "p.tif"), "--instances", str(tmp_path / "i.tif"), "--quiet"]) == 0
    inst, prob = tifffile.imread(tmp_path / "i.tif"), tifffile.imread(tmp_path / "p.tif")
    for k, z in enumerate((1, 2)):  # output slice k is input slice z: ids z * 64 * 64 + cell, as the GUI's
        np.testing.assert_array_equal(inst[k], np.where(inst[k] > 0, instances_from_probability(prob[k]) + z * 4096, 0))


def test_predict_uses_the_model_seed_threshold(tmp_path, monkeypatch):
    """A model's own seed threshold (set by a fine-tune) is the default of predict --instances; --seed-threshold
    still wins."""
    import torch

    import napari_neuroedge.inference.postprocess as post
    from napari_neuroedge.config import NormConfig
    from napari_neuroedge.models.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
    from napari_neuroedge.models.registry import build_model

    torch.manual_seed(0)
    ckpt = make_checkpoint(build_model("unet", base=4, depth=2), "unet", {"base": 4, "depth": 2}, NormConfig())
    ckpt.seed_threshold = 0.42
    save_checkpoint(ckpt, tmp_path / "m.pt")
    assert load_checkpoint(tmp_path / "m.pt").seed_threshold == 0.42
    tifffile.imwrite(tmp_path / "s.tif", (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    used: list[float] = []
    real = post.instances_from_probability
    monkeypatch.setattr(post, "instances_from_probability", lambda p, t=SEED_THRESHOLD: used.append(t) or real(p, t))
    for extra in ([], ["--seed-threshold", "0.3"]):
        assert main(["predict", str(tmp_path / "s.tif"), "-o", str(tmp_path / f"m{len(extra)}.tif"), "--model",
                     str(tmp_path / "m.pt"), "--instances", str(tmp_path / f"i{len(extra)}.tif"), "--quiet",
                     *extra]) == 0
    assert used == [0.42, 0.3]
    with pytest.raises(Exception, match="seed threshold"):
        torch.save({**torch.load(tmp_path / "m.pt", weights_only=True), "seed_threshold": 1.5}, tmp_path / "bad.pt")
        load_checkpoint(tmp_path / "bad.pt")


def test_distance_seeds_keep_cells_apart_through_a_wide_gap():
    """The distance-transform seeds (issue 23: thin membranes with gaps) give each cell its own seed however wide
    the gap, where the interior's connected components merge them; the border runs through the gap."""
    from napari_neuroedge.inference.postprocess import instances_from_distance

    gapped = _two_cells(0.9, gap=(26, 38))  # a 12 px gap: far wider than 2 * seed_distance - 1
    assert len(np.unique(instances_from_probability(gapped))) == 1
    cells = instances_from_distance(gapped)
    _assert_split_at_the_membrane(cells)
    assert cells.dtype == np.uint32 and cells.min() == 1
    _assert_split_at_the_membrane(instances_from_distance(_two_cells(0.9)))
    assert np.array_equal(instances_from_distance(np.ones((16, 16), np.float32)), np.ones((16, 16), np.uint32))
