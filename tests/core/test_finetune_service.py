"""The one fine-tune service (button and CLI): held-out validation, the recipe, the finished model, cancels."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from napari_neuroedge.config import FinetuneOptions, NormConfig, TrainConfig, from_dict, to_dict
from napari_neuroedge.models.checkpoint import load_checkpoint, make_checkpoint
from napari_neuroedge.models.registry import build_model
from napari_neuroedge.progress import drive
from napari_neuroedge.io.sample import synthetic_em
from napari_neuroedge.training.dataset import slices_from_arrays
from napari_neuroedge.training.finetune import (FinetuneOutcome, describe_data, finetune_config, iter_finetune,
                                                split_holdout)
from napari_neuroedge.training.loop import CropSampler

# held-out blocks (one run); the cross-fitted runs over whole slices (the default with two slices) have their tests
FAST = FinetuneOptions(time_limit_s=0, steps=60, batch=4, crop=48, lr=1e-2, val_every=10, device="cpu", threads=1,
                       precision="fp32", cross_slices=False)


@pytest.fixture
def parent():
    torch.manual_seed(0)
    ckpt = make_checkpoint(build_model("unet", base=4, depth=2), "unet", {"base": 4, "depth": 2}, NormConfig())
    ckpt.threshold, ckpt.context = 0.6, 12
    return ckpt


@pytest.fixture
def corrected():
    stack = synthetic_em((2, 96, 112), cell_size=24, seed=4)
    return slices_from_arrays(stack.image, stack.membrane, NormConfig(), source="synthetic")


def test_held_out_pixels_are_never_trained_on_in_any_fold(corrected):
    """Blocks spread over every slice are held out; whatever their labels say, the training copies (labels,
    mask, every loss target) are the same, so no fold ever trains on a held-out label."""
    from napari_neuroedge.config import LossConfig
    from napari_neuroedge.training.dataset import loss_targets
    from napari_neuroedge.training.holdout import n_folds

    loss = LossConfig(skeleton_recall=1.0, weighted_bce=0.5, edge=0.5)
    covered = [np.zeros(s.label.shape, int) for s in corrected]
    for fold in range(n_folds(0.25)):
        train, val = split_holdout(corrected, 0.25, fold=fold)
        assert [v.image.shape for v in val] == [(96, 112)] * 2  # predicted whole, scored on the held-out mask
        corrupt = [dataclasses.replace(s, label=np.where(v.mask > 0, 1 - s.label, s.label).astype(np.uint8))
                   for s, v in zip(corrected, val)]
        train_bad, val_bad = split_holdout(corrupt, 0.25, fold=fold)
        for t, tb, v, c in zip(train, train_bad, val, covered):
            held = v.mask > 0
            assert 0.2 < held.mean() < 0.3 and not (t.mask[held]).any()  # a quarter, masked out of training
            rows, cols = np.nonzero(held)
            assert np.ptp(rows) > 60 and np.ptp(cols) > 70  # spread over the slice, not one band
            a, b = loss_targets(t, loss, 3.0), loss_targets(tb, loss, 3.0)
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
            c += held
        sampler = CropSampler(train, dataclasses.replace(TrainConfig(), batch=4), rng=np.random.default_rng(0))
        assert sampler.keys == ["image", "label", "mask"]
    assert all((c == 1).all() for c in covered)  # the folds tile every slice exactly once
    with pytest.raises(ValueError, match="too small"):
        split_holdout([dataclasses.replace(corrected[0], image=corrected[0].image[:40], label=corrected[0].label[:40])],
                      0.25)


def test_recipe_inherits_the_parent(parent):
    parent.train_config = {"loss": {"f1": 0.0, "focal": 0.0, "bce": 1.0, "skeleton_recall": 0.25}}
    cfg = finetune_config(parent, FinetuneOptions(), has_replay=False)
    assert cfg.loss.bce == 1.0 and cfg.loss.skeleton_recall == 0.25 and cfg.loss.f1 == 0.0
    assert cfg.replay_fraction == 0.0  # replay off without replay data, whatever the form says
    assert finetune_config(parent, FinetuneOptions(), has_replay=True).replay_fraction == 0.3
    assert cfg.model == "unet" and cfg.model_kwargs == {"base": 4, "depth": 2} and cfg.select == "f1-near"
    assert finetune_config(parent, FinetuneOptions(select="f1-rand"), has_replay=False).select == "f1-rand"
    # the corrected-pixel weight chosen leave-one-shift-out (1: no extra weight), and a form's value reaches training
    assert cfg.corrected_weight == 1.0
    assert finetune_config(parent, FinetuneOptions(corrected_weight=3.0), has_replay=False).corrected_weight == 3.0
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg  # saved beside the checkpoint, read back the same
    # the parent's elastic/contrast scheme is kept, its transfer augmentation is not (the user's own microscope)
    parent.train_config = {"augment": {"elastic_p": 0.7, "scale_p": 0.5, "gamma_p": 0.3, "blur_p": 0.2,
                                       "noise_p": 0.2, "crop": 512}}
    aug = finetune_config(parent, FinetuneOptions(crop=128), has_replay=False).augment
    assert aug.elastic_p == 0.7 and aug.crop == 128
    assert (aug.scale_p, aug.gamma_p, aug.blur_p, aug.noise_p) == (0.0, 0.0, 0.0, 0.0)


def test_finetune_lowers_loss_and_writes_a_small_honest_model(parent, corrected, tmp_path):
    outcome = drive(iter_finetune(parent, corrected, tmp_path / "run", tmp_path / "ft.pt", options=FAST))
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in lines[1:]]  # line 0: the parent, validated at step 0
    assert np.mean(losses[-10:]) < 0.9 * np.mean(losses[:10])
    assert outcome.validated and outcome.path == tmp_path / "ft.pt" and outcome.steps == 60
    assert set(outcome.best_metrics) >= {"f1", "rand_error", "pixel_error"}
    ckpt = load_checkpoint(outcome.path)
    assert ckpt.optimizer is None and ckpt.context == 12  # no Adam state; the parent's context
    assert ckpt.provenance["validation"].startswith("held-out blocks (25% of each corrected slice's area")
    # 2 x 96 x 112 / 4 held-out pixels are too few to recalibrate: the parent's threshold, labelled as carried over
    assert ckpt.threshold == 0.6 and ckpt.provenance["threshold_source"].startswith("carried over")
    assert (tmp_path / "run" / "best.pt").exists()  # resume state stays in the run folder
    # the parent was validated first (step 0), with the same measures as every checkpoint after it
    first = json.loads(lines[0])
    assert first["step"] == 0 and first["init"] is True and "loss" not in first
    assert first["val"].keys() == json.loads(lines[10])["val"].keys()
    assert outcome.parent_metrics is not None and outcome.parent_metrics.keys() == outcome.kept_metrics.keys()
    # a random parent is beaten: the kept model is a fine-tuned candidate, chosen with its parent weight
    assert not outcome.parent_kept and 0.0 <= outcome.parent_weight < 1.0
    assert outcome.kept_metrics["rand_error"] < outcome.parent_metrics["rand_error"]
    assert any(n.startswith("kept step") for n in outcome.notes)


def test_threshold_recalibrated_on_enough_held_out_pixels(parent, corrected, tmp_path, monkeypatch):
    import napari_neuroedge.training.guard as guard

    monkeypatch.setattr(guard, "MIN_CALIBRATION_PIXELS", 1000)
    outcome = drive(iter_finetune(parent, corrected, tmp_path / "run", tmp_path / "ft.pt", options=FAST))
    ckpt = load_checkpoint(outcome.path)
    assert not outcome.parent_kept  # a random parent is beaten
    held = sum(int(v.mask.sum()) for v in split_holdout(corrected, 0.25)[1])
    assert ckpt.provenance["threshold_source"].startswith(f"recalibrated on {held} held-out")
    sweep = ckpt.provenance["threshold_sweep"]
    assert len(sweep) == 9 and ckpt.threshold == float(min(sweep, key=lambda t: (sweep[t], abs(float(t) - 0.5))))
    seeds = ckpt.provenance["seed_threshold_sweep"]  # the instance seed threshold: lowest held-out Rand error
    from napari_neuroedge.training.finetune import choose_seed_threshold

    assert len(seeds) == 7 and ckpt.seed_threshold == choose_seed_threshold({float(t): e for t, e in seeds.items()},
                                                                           0.3)
    assert outcome.seed_threshold == ckpt.seed_threshold


def _cancel_after(gen, steps):
    for ev in gen:
        if ev.stage == "train" and ev.done >= steps:
            gen.close()
            return
    raise AssertionError("finished before the cancel")


def test_cancel_before_validation_keeps_nothing(parent, corrected, tmp_path):
    outcome = FinetuneOutcome()
    _cancel_after(iter_finetune(parent, corrected, tmp_path / "run", tmp_path / "ft.pt", options=FAST,
                                outcome=outcome), 3)
    assert outcome.cancelled and outcome.path is None and not list(tmp_path.glob("*.pt"))
    assert any("no model was kept" in n for n in outcome.notes)


def test_cancel_after_validation_keeps_the_validated_model(parent, corrected, tmp_path):
    outcome = FinetuneOutcome()
    _cancel_after(iter_finetune(parent, corrected, tmp_path / "run", tmp_path / "ft.pt", options=FAST,
                                outcome=outcome), 13)
    assert outcome.cancelled and outcome.path.name == "ft-cancelled.pt"
    ckpt = load_checkpoint(outcome.path)
    assert ckpt.step == 10 and ckpt.optimizer is None and ckpt.provenance["cancelled"] is True


def test_describe_data_flags_almost_empty_labels(corrected):
    empty = dataclasses.replace(corrected[0], label=np.zeros_like(corrected[0].label))
    info = describe_data([corrected[1], empty])
    assert info["slices"][0]["membrane_fraction"] > 0.05 and len(info["warnings"]) == 1
    assert "almost no membrane" in info["warnings"][0]


def test_interpolate_towards_the_parent_is_exact(parent):
    from napari_neuroedge.models.averaging import interpolate_towards

    child = dataclasses.replace(parent, state_dict={k: v + 1.0 if v.is_floating_point() else v
                                                    for k, v in parent.state_dict.items()}, threshold=0.7, step=9)
    half = interpolate_towards(parent, child, 0.5)
    for k, v in parent.state_dict.items():
        if v.is_floating_point():
            assert torch.allclose(half.state_dict[k], v + 0.5, atol=1e-6)
    assert torch.equal(interpolate_towards(parent, child, 0.0).state_dict["head.weight"], child.state_dict["head.weight"])
    assert torch.equal(interpolate_towards(parent, child, 1.0).state_dict["head.weight"], parent.state_dict["head.weight"])
    assert (half.threshold, half.step, half.optimizer) == (0.7, 9, None)  # the child's, not the parent's
    with pytest.raises(ValueError, match="parent_weight"):
        interpolate_towards(parent, child, 1.5)


def test_kept_model_is_a_parent_weighted_mix_and_reports_its_own_metrics(parent, corrected, tmp_path):
    outcome = drive(iter_finetune(parent, corrected, tmp_path / "a", tmp_path / "a.pt", options=FAST))
    kept = load_checkpoint(outcome.path)
    w = outcome.parent_weight
    assert w in (0.0, 0.35, 0.7) and kept.provenance["parent_weight"] == w
    child = load_checkpoint(tmp_path / "a" / "best.pt")
    assert kept.step == child.step
    for k, v in parent.state_dict.items():  # the chosen checkpoint, mixed with the parent at the chosen weight
        if v.is_floating_point():
            assert torch.allclose(kept.state_dict[k], w * v + (1 - w) * child.state_dict[k], atol=1e-5)
    table = kept.provenance["guard"]["candidates"]  # every weight of the grid, and the recalibrated parent
    assert sorted(row["parent_weight"] for row in table) == [0.0, 0.35, 0.7, 1.0]
    from napari_neuroedge.training.loop import validate

    held_out = split_holdout(corrected, FAST.holdout)[1]  # the kept model's own validation, as the loop runs it
    assert outcome.kept_metrics == pytest.approx(validate(kept.build(), held_out, torch.device("cpu"), tile=1024,
                                                          threshold=kept.threshold, precision="fp32",
                                                          seed_threshold=kept.seed_threshold))
    assert outcome.parent_metrics == pytest.approx(validate(parent.build(), held_out, torch.device("cpu"), tile=1024,
                                                            threshold=parent.threshold, precision="fp32",
                                                            seed_threshold=parent.seed_threshold))


def test_seed_threshold_moves_only_on_a_difference_the_held_out_pixels_resolve():
    from napari_neuroedge.training.finetune import choose_seed_threshold

    # VNC's held-out sweep: 0.4 'won' by 1e-6; the parent's 0.3 is kept
    noisy = {0.25: 0.009219, 0.3: 0.009167, 0.35: 0.009167, 0.4: 0.009166, 0.45: 0.016991}
    assert choose_seed_threshold(noisy, 0.3) == 0.3
    clear = {0.2: 0.031, 0.3: 0.026, 0.4: 0.020}
    assert choose_seed_threshold(clear, 0.3) == 0.4  # a real difference moves it
    assert choose_seed_threshold({0.2: 0.01, 0.4: 0.01}, 0.3) == 0.2  # equidistant ties: the more cautious seed


def test_calibrate_thresholds_uses_only_labelled_pixels_and_the_tie_rule():
    """calibrate_thresholds (finalise's and the benchmark peer's calibration): the membrane threshold with no
    error on the labelled pixels, a wrong region under mask 0 ignored; the seed by choose_seed_threshold."""
    from napari_neuroedge.training.finetune import (calibrate_thresholds, choose_seed_threshold,
                                                    seed_threshold_sweep)
    from napari_neuroedge.io.sample import synthetic_em
    from napari_neuroedge.training.dataset import LabelledSlice

    stack = synthetic_em((1, 96, 96), cell_size=24, seed=5)
    label = (stack.membrane[0] > 0).astype(np.uint8)
    prob = np.where(label > 0, 0.72, 0.18).astype(np.float32)
    prob[:20] = 1.0 - prob[:20]  # wrong everywhere in the top rows...
    mask = np.ones_like(label)
    mask[:20] = 0  # ...which are not labelled
    sl = LabelledSlice(np.zeros(label.shape, np.float32), label, mask)
    thr, seed, errors, seeds = calibrate_thresholds([prob], [sl], 0.3)
    assert 0.18 < thr <= 0.72 and errors[thr] == 0.0
    assert seeds == seed_threshold_sweep([prob], [sl]) and seed == choose_seed_threshold(seeds, 0.3)
    unmasked = calibrate_thresholds([prob], [LabelledSlice(sl.image, label)], 0.3)[2]
    assert unmasked[thr] > 0.05  # the masked rows would count otherwise


# ----------------------------------------------------------------------------------- the guard (issue 23)

@pytest.fixture(scope="module")
def trained_parent(tmp_path_factory):
    """A small U-Net trained for a few seconds on other synthetic slices: a parent worth keeping."""
    from napari_neuroedge.training.loop import iter_fit

    stack = synthetic_em((6, 96, 112), cell_size=24, seed=4)
    data = slices_from_arrays(stack.image, stack.membrane, NormConfig())
    cfg = TrainConfig(model="unet", model_kwargs={"base": 4, "depth": 2}, steps=80, batch=4, lr_backbone=1e-2,
                      lr_head=1e-2, val_every=10**6, device="cpu", threads=1, precision="fp32")
    cfg = dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment, crop=48))
    result = drive(iter_fit(cfg, data[2:], [], tmp_path_factory.mktemp("parent")))
    ckpt = load_checkpoint(result.last)
    ckpt.optimizer, ckpt.provenance["name"] = None, "trained-parent"
    return ckpt, data[:2]


def test_a_finetune_made_worse_keeps_the_parent_and_says_so(trained_parent, tmp_path):
    parent, corrected = trained_parent
    ruin = dataclasses.replace(FAST, steps=30, lr=1.0)  # a learning rate that wrecks the weights
    outcome = drive(iter_finetune(parent, corrected, tmp_path / "run", tmp_path / "ft.pt", options=ruin))
    assert outcome.parent_kept and outcome.kept.startswith("the parent") and outcome.parent_weight == 1.0
    assert any(n.startswith("fine-tuning did not improve neuron separation on your held-out pixels; the model is "
                            "kept as the parent 'trained-parent'") for n in outcome.notes)
    kept = load_checkpoint(outcome.path)
    for k, v in parent.state_dict.items():  # the user's model, re-labelled: not one weight moved
        assert torch.equal(kept.state_dict[k], v)
    assert kept.provenance["parent_kept"] is True and kept.provenance["name"] == "ft"
    # the rejected fine-tune is there for the user to try, and it is worse
    cand = load_checkpoint(outcome.candidate)
    assert outcome.candidate.parent == tmp_path / "run" and cand.provenance["rejected"]
    assert cand.provenance["kept_metrics"]["rand_error"] > outcome.parent_metrics["rand_error"]
    assert outcome.kept_metrics["rand_error"] <= outcome.parent_metrics["rand_error"]


def _evaluation(name, weight, rand, f1, rand_changed=None, f1_changed=None, changed_px=0.0):
    from napari_neuroedge.training.guard import Evaluation

    n = len(rand)
    nan = np.full(n, np.nan)
    metrics = {"f1": float(np.mean(f1)), "rand_error": float(np.mean(rand)), "changed_px": changed_px}
    return Evaluation(name, weight, None, 0.5, 0.3, metrics,
                      {"rand": np.asarray(rand, float), "f1": np.asarray(f1, float),
                       "rand_changed": nan if rand_changed is None else np.asarray(rand_changed, float),
                       "f1_changed": nan if f1_changed is None else np.asarray(f1_changed, float)})


def test_guard_needs_a_rand_gain_beyond_the_noise_of_the_blocks():
    from napari_neuroedge.training.guard import choose, describe

    parent = _evaluation("the parent", 1.0, [0.10, 0.12, 0.08, 0.11, 0.09, 0.10], [0.8] * 6)
    clear = _evaluation("step 50", 0.0, [0.05, 0.06, 0.04, 0.06, 0.05, 0.05], [0.82] * 6)
    noisy = _evaluation("step 25", 0.0, [0.02, 0.20, 0.01, 0.19, 0.03, 0.11], [0.9] * 6)  # mean 0.093
    sharper = _evaluation("step 75", 0.0, [0.10, 0.12, 0.08, 0.11, 0.09, 0.10], [0.95] * 6)  # F1 only
    v = choose(parent, [noisy, clear, sharper])
    assert v.kept is clear and not v.parent_kept
    v = choose(parent, [noisy, sharper])  # F1 alone does not make neurons separate better
    assert v.parent_kept and v.kept is parent and v.weak  # the noisy gain is unresolved: said so
    notes = describe(v, "default", "run/candidate.pt")
    assert notes[0].startswith("fine-tuning did not improve neuron separation on your held-out pixels; the model is "
                               "kept as the parent 'default'")
    assert "too weak to decide" in notes[1] and "correct more slices or a larger area" in notes[1]
    worse_f1 = _evaluation("step 90", 0.0, [0.05, 0.06, 0.04, 0.06, 0.05, 0.05], [0.6] * 6)
    assert choose(parent, [worse_f1]).parent_kept  # Rand and F1 together
    blocks_only = _evaluation("step 80", 0.0, [0.05, 0.06, 0.04, 0.06, 0.05, 0.05], [0.82] * 6)
    blocks_only.metrics["rand_error"] = 0.2  # better block by block, worse over all the held-out pixels
    assert choose(parent, [blocks_only]).parent_kept
    two_blocks = _evaluation("the parent", 1.0, [0.1, 0.1], [0.8] * 2)
    assert choose(two_blocks, [_evaluation("s", 0.0, [0.0, 0.0], [0.9] * 2)]).weak  # too few blocks to tell


def test_guard_weighs_the_pixels_the_user_changed():
    """Where the held-out part holds the user's changes, the evidence is taken there (elsewhere the labels are
    the parent's own prediction), and the all-pixel figures must not get worse."""
    from napari_neuroedge.training.guard import choose

    f1 = [0.99] * 6
    parent = _evaluation("the parent", 1.0, [0.01] * 6, f1, [0.30, 0.25, 0.35, 0.3, 0.28, 0.32], [0.5] * 6, 400.0)
    fixes = _evaluation("step 50", 0.0, [0.0105] * 6, f1, [0.05, 0.08, 0.04, 0.1, 0.06, 0.07], [0.8] * 6, 400.0)
    v = choose(parent, [fixes])
    assert v.region == "changed" and v.kept is fixes  # all-pixel Rand 0.0105 vs 0.010: within the tolerance
    breaks = _evaluation("step 60", 0.0, [0.05] * 6, f1, [0.05, 0.08, 0.04, 0.1, 0.06, 0.07], [0.8] * 6, 400.0)
    assert choose(parent, [breaks]).parent_kept  # fixed where corrected, broken elsewhere: not kept
    few = _evaluation("the parent", 1.0, [0.01] * 6, f1, [0.3] * 6, [0.5] * 6, 40.0)
    v = choose(few, [fixes])
    assert v.region == "all" and v.parent_kept and v.weak  # 40 changed pixels held out: too few to decide


def test_held_out_scores_report_the_changed_pixels():
    from napari_neuroedge.inference.postprocess import instances_from_probability
    from napari_neuroedge.training.holdout import split_holdout
    from napari_neuroedge.training.scoring import score_slice

    stack = synthetic_em((1, 250, 250), cell_size=30, seed=2)
    label = stack.membrane[0].astype(np.uint8)
    changed = np.zeros_like(label)
    changed[100:140, :] = label[100:140, :]  # the user drew the membranes of one band the parent had missed
    sl = slices_from_arrays(stack.image, stack.membrane, NormConfig())[0]
    sl = dataclasses.replace(sl, corrected=changed)
    _, (val,) = split_holdout([sl], 0.25)
    share = (changed[val.mask > 0] > 0).sum() / (changed > 0).sum()
    assert 0.1 < share < 0.4  # the held-out fold holds about its share of the changes
    parent = np.where((label > 0) & (changed == 0), 0.9, 0.05).astype(np.float32)  # misses the drawn membranes
    m = score_slice((parent >= 0.5).astype(np.uint8), instances_from_probability(parent), val)
    assert m["changed_px"] == (changed[val.mask > 0] > 0).sum()
    assert m["f1_changed"] < 0.5 < m["f1"] and m["rand_error_changed"] > m["rand_error"]


def test_a_callers_validation_slice_counts_in_blocks_too(corrected):
    from napari_neuroedge.training.holdout import block_size, held_out_blocks

    whole = corrected[0]  # the CLI's --val-data: no held-out mask, the whole slice is validation
    blocks = held_out_blocks(whole)
    assert block_size(whole.image.shape) == 32 and len(blocks) == 3 * 4  # 96 x 112 px in 32 px blocks
    _, (val, _) = split_holdout(corrected, 0.25, fold=0)
    assert all(val.mask[w].any() for w in held_out_blocks(val)) and len(held_out_blocks(val)) == 3


def test_validation_is_throttled_under_a_time_limit_but_never_the_first_nor_the_last(parent, corrected, tmp_path,
                                                                                     monkeypatch):
    import napari_neuroedge.training.loop as loop

    monkeypatch.setattr(loop, "_VAL_WAIT", 1e9)  # as if a validation cost far more than training
    opts = dataclasses.replace(FAST, time_limit_s=1e6, steps=40)  # the steps end the run, the clock never does
    drive(iter_finetune(parent, corrected, tmp_path / "run", tmp_path / "ft.pt", options=opts))
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "val" in e] == [0, 10, 40]  # the parent, the first checkpoint, the last


# ------------------------------------------------------ cross-fitting over whole slices (issue 23, the default)

CROSS = dataclasses.replace(FAST, cross_slices=True)


def test_slice_folds_validate_every_slice_once_on_a_model_that_never_saw_it(corrected):
    from napari_neuroedge.training.holdout import slice_folds

    third = dataclasses.replace(corrected[0], meta={**corrected[0].meta, "slice": 2})
    small = dataclasses.replace(corrected[1], image=corrected[1].image[:40], label=corrected[1].label[:40],
                                meta={"slice": 3})
    slices = [*corrected, third, small]
    folds = slice_folds(slices)
    assert len(folds) == 2
    validated = []
    for train, val in folds:
        ids = {id(s) for s in train}
        held = [s.meta["slice"] for s in val]
        assert not any(s.meta["slice"] in held for s in train)  # no slice is trained on and validated in one run
        assert id(small) in ids  # too small to validate on: trained on in both runs
        assert all(v.image.shape == (96, 112) and v.mask is None and v.meta["block"] for v in val)  # whole slices
        validated += held
    assert sorted(validated) == [0, 1, 2]  # every large slice validated exactly once
    assert slice_folds(corrected[:1]) == [] and slice_folds([corrected[0], small]) == []
    windows = [dataclasses.replace(s, meta={**s.meta, "window": [0, 0, 96, 112]}) for s in corrected]
    assert slice_folds(windows) == []  # windows of one large image may overlap: blocks instead


def test_cross_fitted_finetune_runs_twice_and_keeps_the_mean_of_the_two(parent, corrected, tmp_path):
    from napari_neuroedge.models.averaging import average_checkpoints, interpolate_towards

    gen = iter_finetune(parent, corrected, tmp_path / "run", tmp_path / "ft.pt", options=CROSS)
    events = []
    try:
        while True:
            events.append(next(gen))
    except StopIteration as stop:
        outcome = stop.value
    inits = [e for e in events if e.info.get("init")]
    assert [(e.done, e.info["fold"], e.info["folds"]) for e in inits] == [(0, 1, 2), (30, 2, 2)]
    steps = [e.done for e in events if "loss" in e.info]
    assert steps == list(range(1, 61))  # one run's steps as the user sees them, half the budget each
    assert outcome.steps == 60 and outcome.validated
    for k in (1, 2):  # each run validated on the other slice only, predicted whole
        log = [json.loads(x) for x in (tmp_path / "run" / f"fold-{k}" / "log.jsonl").read_text().splitlines()]
        assert log[0]["init"] and len(log) == 31
    kept = load_checkpoint(outcome.path)
    assert kept.provenance["validation"].startswith("whole slices: 2 runs")
    assert not outcome.parent_kept  # a random parent is beaten
    children = [load_checkpoint(tmp_path / "run" / f"fold-{k}" / "best.pt") for k in (1, 2)]
    mean = average_checkpoints(children)
    expect = interpolate_towards(parent, dataclasses.replace(children[1], state_dict=mean.state_dict),
                                 outcome.parent_weight) if outcome.parent_weight > 0 else mean
    for k, v in kept.state_dict.items():  # the user's model is the mean of the two runs' (mixed with the parent)
        torch.testing.assert_close(v, expect.state_dict[k])
    assert outcome.kept.startswith("the mean of 2 cross-fitted fine-tunes")
    # both slices were held out (in different runs), so the kept model's figures count all their pixels
    assert outcome.parent_metrics.keys() == outcome.kept_metrics.keys()


def test_cross_fitted_finetune_made_worse_keeps_the_parent(trained_parent, tmp_path):
    parent, corrected = trained_parent
    ruin = dataclasses.replace(CROSS, steps=30, lr=1.0)
    outcome = drive(iter_finetune(parent, corrected, tmp_path / "run", tmp_path / "ft.pt", options=ruin))
    assert outcome.parent_kept and outcome.kept.startswith("the parent")
    kept = load_checkpoint(outcome.path)
    assert all(torch.equal(kept.state_dict[k], v) for k, v in parent.state_dict.items())
    assert outcome.candidate.parent == tmp_path / "run"  # the rejected mean, for the user to try


def test_cancel_in_the_second_run_keeps_the_first_runs_validated_model(parent, corrected, tmp_path):
    outcome = FinetuneOutcome()
    _cancel_after(iter_finetune(parent, corrected, tmp_path / "run", tmp_path / "ft.pt", options=CROSS,
                                outcome=outcome), 33)
    assert outcome.cancelled and outcome.path.name == "ft-cancelled.pt"
    assert (tmp_path / "run" / "fold-2" / "last.pt").exists()  # the interrupted run left a valid resume file
    ckpt = load_checkpoint(outcome.path)
    assert ckpt.optimizer is None and ckpt.provenance["cancelled"] is True


def test_step_selection_scores() -> None:
    """f1-rand ranks a thinner, flooded step below a thicker one; f1-near ranks by the boundaries alone, near
    the changes too; an unknown rule is an error."""
    from napari_neuroedge.training.loop import _score

    early = {"f1": 0.63, "rand_error": 0.25, "f1_changed": 0.84, "rand_error_changed": 0.45}
    late = {"f1": 0.80, "rand_error": 0.57, "f1_changed": 0.81, "rand_error_changed": 0.73}
    assert _score(early, "f1-rand") > _score(late, "f1-rand")
    assert _score(late, "f1-near") == pytest.approx(1.61) and _score(early, "f1-near") == pytest.approx(1.47)
    assert _score({"f1": 0.7, "rand_error": 0.1}, "f1-near") == 0.7  # no changes known: F1 alone
    with pytest.raises(ValueError, match="f1-near"):
        _score(late, "dice")
