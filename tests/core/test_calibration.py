"""A model's membrane threshold: chosen on labelled slices, stored in its checkpoint, used by predict/evaluate;
and weight averaging of checkpoints."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import tifffile
import torch

from napari_neuroedge.training.calibration import choose_threshold, pixel_error_by_threshold
from napari_neuroedge.cli import main
from napari_neuroedge.config import NormConfig
from napari_neuroedge.models.averaging import average_checkpoints
from napari_neuroedge.models.checkpoint import CheckpointError, load_checkpoint, make_checkpoint, save_checkpoint
from napari_neuroedge.models.registry import build_model


def _tiny(seed: int = 0, norm: NormConfig | None = None):
    torch.manual_seed(seed)
    return make_checkpoint(build_model("unet", base=4, depth=2), "unet", {"base": 4, "depth": 2},
                           norm or NormConfig())


@pytest.fixture(scope="module")
def stack_and_labels(tmp_path_factory, synth):
    d = tmp_path_factory.mktemp("cal")
    tifffile.imwrite(d / "img.tif", synth.image, photometric="minisblack")
    tifffile.imwrite(d / "lab.tif", synth.membrane, photometric="minisblack")
    return d / "img.tif", d / "lab.tif"


# ------------------------------------------------------------------------------------------------ core sweep

def test_sweep_counts_errors_exactly():
    prob = np.array([0.1, 0.35, 0.55, 0.65, 0.9, 0.62], np.float32)
    gt = np.array([0, 0, 0, 1, 1, 1])
    errors = pixel_error_by_threshold(prob, gt, (0.3, 0.5, 0.6, 0.7))
    # 0.3: 0.35, 0.55 wrongly membrane -> 2/6; 0.5: 0.55 -> 1/6; 0.6: none -> 0; 0.7: 0.65 and 0.62 missed -> 2/6
    assert errors == pytest.approx({0.3: 2 / 6, 0.5: 1 / 6, 0.6: 0.0, 0.7: 2 / 6})
    assert choose_threshold(errors) == 0.6
    # a pixel exactly at the threshold is membrane, as in membrane_from_probability (prob >= threshold)
    assert pixel_error_by_threshold(np.array([0.5]), np.array([1]), (0.5,)) == {0.5: 0.0}


def test_sweep_finds_the_threshold_that_made_the_labels(rng):
    prob = rng.random((40, 50)).astype(np.float32)
    errors = pixel_error_by_threshold(prob, prob >= 0.62, np.round(np.arange(0.3, 0.71, 0.02), 2))
    assert choose_threshold(errors) == pytest.approx(0.62) and errors[0.62] == 0.0
    assert errors[0.5] == pytest.approx(((prob >= 0.5) != (prob >= 0.62)).mean())


def test_sweep_honours_the_mask_and_ties_go_to_half():
    prob = np.array([0.2, 0.8, 0.45, 0.55], np.float32)
    gt = np.array([0, 1, 1, 0])
    mask = np.array([1, 1, 0, 0])  # the two contradicting pixels are unlabelled
    errors = pixel_error_by_threshold(prob, gt, (0.3, 0.4, 0.5, 0.6, 0.7), mask=mask)
    assert set(errors.values()) == {0.0} and choose_threshold(errors) == 0.5
    with pytest.raises(ValueError, match="no labelled pixels"):
        pixel_error_by_threshold(prob, gt, mask=np.zeros(4))
    with pytest.raises(ValueError, match="strictly between"):
        pixel_error_by_threshold(prob, gt, (0.0,))


# ------------------------------------------------------------------------------------------ checkpoint field

def test_threshold_round_trips_and_old_files_mean_half(tmp_path):
    ck = dataclasses.replace(_tiny(), threshold=0.63)
    save_checkpoint(ck, tmp_path / "a.pt")
    assert load_checkpoint(tmp_path / "a.pt").threshold == pytest.approx(0.63)
    assert json.loads((tmp_path / "a.json").read_text())["threshold"] == pytest.approx(0.63)
    payload = torch.load(tmp_path / "a.pt", weights_only=True)
    del payload["threshold"]  # a checkpoint written before thresholds were stored
    torch.save(payload, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").threshold == 0.5
    payload["threshold"] = 1.5
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="threshold 1.5"):
        load_checkpoint(tmp_path / "bad.pt")


# ------------------------------------------------------------------------------------------------------- CLI

def test_calibrate_cli_writes_a_copy_with_the_best_threshold(tmp_path, stack_and_labels, capsys):
    img, lab = stack_and_labels
    src = save_checkpoint(_tiny(), tmp_path / "m.pt")
    out = tmp_path / "cal.pt"
    args = ["calibrate", str(img), str(lab), "--model", str(src), "-o", str(out), "--slices", "0:2", "--tta", "1",
            "--tile", "64", "--thresholds", "0.3:0.7:0.1", "--quiet"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    # the same sweep by hand, from predict's probability of the same slices
    assert main(["predict", str(img), "-o", str(tmp_path / "m.tif"), "--prob", str(tmp_path / "p.tif"), "--model",
                 str(src), "--slices", "0:2", "--tile", "64", "--quiet"]) == 0
    prob = tifffile.imread(tmp_path / "p.tif")
    gt = tifffile.imread(lab)[:2] == 1
    by_hand = {t: float(((prob >= t) != gt).mean()) for t in (0.3, 0.4, 0.5, 0.6, 0.7)}
    best = min(by_hand, key=lambda t: (by_hand[t], abs(t - 0.5)))
    assert report["threshold"] == pytest.approx(best)
    assert report["pixel_error"] == pytest.approx(by_hand[best], abs=1e-6)
    ck = load_checkpoint(out)
    assert ck.threshold == pytest.approx(best)
    assert ck.provenance["calibration"]["slices"] == "0:2"
    for k, v in load_checkpoint(src).state_dict.items():
        torch.testing.assert_close(ck.state_dict[k], v)
    assert load_checkpoint(src).threshold == 0.5  # the source is untouched
    assert main(args) == 2 and "already exists" in capsys.readouterr().err  # never overwrites


def test_predict_and_evaluate_use_the_models_threshold(tmp_path, stack_and_labels, capsys):
    img, lab = stack_and_labels
    src = save_checkpoint(_tiny(), tmp_path / "m.pt")
    assert main(["predict", str(img), "-o", str(tmp_path / "m0.tif"), "--prob", str(tmp_path / "p0.tif"),
                 "--model", str(src), "--tile", "64", "--quiet"]) == 0
    prob = tifffile.imread(tmp_path / "p0.tif")
    thr = float(np.round(np.quantile(prob, 0.6), 4))
    assert ((prob >= thr) != (prob >= 0.5)).mean() > 0.01  # else this test could not tell them apart
    cal = save_checkpoint(dataclasses.replace(load_checkpoint(src), threshold=thr), tmp_path / "cal.pt")
    assert main(["predict", str(img), "-o", str(tmp_path / "m1.tif"), "--model", str(cal), "--tile", "64",
                 "--quiet"]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "m1.tif"), (prob >= thr).astype(np.uint8))
    # an explicit --threshold wins over the model's
    assert main(["predict", str(img), "-o", str(tmp_path / "m2.tif"), "--model", str(cal), "--tile", "64",
                 "--threshold", "0.5", "--quiet"]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "m2.tif"), (prob >= 0.5).astype(np.uint8))
    # the blockwise (Dask) path thresholds with the model's threshold too
    assert main(["predict", str(img), "-o", str(tmp_path / "m3.tif"), "--model", str(cal), "--tile", "64",
                 "--scheduler", "sync", "--prob", str(tmp_path / "p3.zarr"), "--quiet"]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "m3.tif"), (prob >= thr).astype(np.uint8))
    capsys.readouterr()
    gt = tifffile.imread(lab)
    for extra, t in (([], 0.5), (["--model", str(cal)], thr), (["--model", str(cal), "--threshold", "0.5"], 0.5)):
        assert main(["evaluate", str(tmp_path / "p0.tif"), str(lab), *extra]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["pixel_error"] == pytest.approx(((prob >= t) != (gt == 1)).mean(), abs=1e-6)


# ------------------------------------------------------------------------------------------------- averaging

def test_average_is_the_elementwise_mean_and_resets_threshold(tmp_path):
    a, b, c = _tiny(0), _tiny(1), _tiny(2)
    a = dataclasses.replace(a, threshold=0.6, step=10)
    b = dataclasses.replace(b, context=48)  # a run that lost its measured context still gets the architecture's
    avg = average_checkpoints([a, b, c], {"note": "x"})
    assert avg.context == 48
    for k, v in a.state_dict.items():
        if v.is_floating_point():
            torch.testing.assert_close(avg.state_dict[k], (v + b.state_dict[k] + c.state_dict[k]) / 3)
        else:
            assert torch.equal(avg.state_dict[k], v)
    assert avg.threshold == 0.5 and avg.step == 10 and avg.optimizer is None and avg.provenance["note"] == "x"
    avg.build()  # loads into the architecture
    assert not torch.equal(avg.state_dict["head.weight"], a.state_dict["head.weight"])


def test_average_refuses_mixed_models(tmp_path):
    other = make_checkpoint(build_model("unet", base=8, depth=2), "unet", {"base": 8, "depth": 2}, NormConfig())
    with pytest.raises(CheckpointError, match="one architecture"):
        average_checkpoints([_tiny(), other])
    with pytest.raises(CheckpointError, match="normalises"):
        average_checkpoints([_tiny(), _tiny(1, NormConfig(mode="meanstd"))])
    with pytest.raises(ValueError, match="at least one"):
        average_checkpoints([])


def test_average_cli_round_trip(tmp_path, capsys):
    paths = [save_checkpoint(_tiny(i), tmp_path / f"s{i}.pt") for i in range(2)]
    out = tmp_path / "avg.pt"
    assert main(["average", *map(str, paths), "-o", str(out)]) == 0
    ck = load_checkpoint(out)
    w = [load_checkpoint(p).state_dict["head.weight"] for p in paths]
    torch.testing.assert_close(ck.state_dict["head.weight"], (w[0] + w[1]) / 2)
    assert [s["path"] for s in ck.provenance["averaged_from"]] == list(map(str, paths))
    capsys.readouterr()
    assert main(["average", *map(str, paths), "-o", str(out)]) == 2 and "already exists" in capsys.readouterr().err


# ------------------------------------------------------------------ small stacks: held-out blocks, known seed

def _gapped_probability(membrane: np.ndarray, rng: np.random.Generator, membrane_p: float = 0.47,
                        gap_p: float = 0.27) -> np.ndarray:
    """A boundary probability whose best seed threshold is known: membranes at ``membrane_p`` with gaps at
    ``gap_p`` (a seed threshold above it floods through them: neurons merge), cell interiors at a level drawn per
    cell in [0.05, 0.22] (a seed threshold below a cell's level leaves it without a seed: it is swallowed).
    Only 0.25 of :data:`SEED_THRESHOLDS` keeps every cell and every gap closed."""
    from napari_neuroedge.metrics import instances_from_membrane

    cells = instances_from_membrane(membrane)
    level = rng.uniform(0.05, 0.22, int(cells.max()) + 1)
    prob = np.where(membrane > 0, membrane_p, level[cells]).astype(np.float32)
    ys, xs = np.nonzero(membrane)
    for k in rng.choice(len(ys), size=len(ys) // 40, replace=False):  # 6 px gaps along the membranes
        y, x = ys[k], xs[k]
        win = (slice(max(y - 3, 0), y + 3), slice(max(x - 3, 0), x + 3))
        prob[win] = np.where(membrane[win] > 0, gap_p, prob[win])
    return prob


def test_two_small_slices_calibrate_both_thresholds_on_spread_held_out_blocks(rng):
    """Two 250 x 250 slices (the FIB-SEM case of issue 23) hold out enough, spread-out pixels to recalibrate the
    membrane threshold and to recover the one seed threshold that neither merges through gaps nor loses cells."""
    from napari_neuroedge.training.calibration import SEED_THRESHOLDS
    from napari_neuroedge.io.sample import synthetic_em
    from napari_neuroedge.training import guard
    from napari_neuroedge.training.dataset import slices_from_arrays
    from napari_neuroedge.training.holdout import split_holdout

    assert 0.25 in SEED_THRESHOLDS
    stack = synthetic_em((2, 250, 250), cell_size=30, seed=11)
    slices = slices_from_arrays(stack.image, stack.membrane, NormConfig())
    _, val = split_holdout(slices, 0.25)
    held = sum(int(v.mask.sum()) for v in val)
    assert held >= guard.MIN_CALIBRATION_PIXELS > 15_000  # 25% of 2 x 250^2 is enough to calibrate on
    probs = [_gapped_probability(s.label, rng) for s in slices]
    ckpt = dataclasses.replace(_tiny(), threshold=0.6, seed_threshold=0.4)  # the thresholds a parent carried
    ev = guard.evaluate("model", 0.0, ckpt, probs, val, parent_seed=0.4, calibrate=True)
    assert ev.seed_threshold == 0.25
    sweep = ev.threshold_sweep  # 0.3-0.45 err only on the gaps; of those ties, the one nearest 0.5
    assert ev.threshold == 0.45 and len(sweep) == 9 and sweep[0.45] == min(sweep.values()) < sweep[0.5]
    carried = guard.evaluate("model", 0.0, ckpt, probs, val, parent_seed=0.4, calibrate=False)
    assert ev.metrics["rand_error"] < 0.5 * carried.metrics["rand_error"]  # what the calibration is worth
    # the cross-fitted blocks (each scored at the seed chosen on the other half) agree
    assert np.nanmean(ev.blocks["rand"]) < 0.5 * np.nanmean(carried.blocks["rand"])
