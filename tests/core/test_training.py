"""The training loop lowers the loss, validates, checkpoints, resumes and survives a cancel."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_neuroedge.config import AugmentConfig, LossConfig, NormConfig, TrainConfig
from napari_neuroedge.models.checkpoint import load_checkpoint
from napari_neuroedge.progress import CallbackProgress, Cancelled, drive
from napari_neuroedge.sample import synthetic_em
from napari_neuroedge.training.dataset import slices_from_arrays
from napari_neuroedge.training.loop import CropSampler, iter_fit


@pytest.fixture(scope="module")
def slices():
    s = synthetic_em((4, 96, 96), cell_size=20, seed=3)
    return slices_from_arrays(s.image, s.membrane, NormConfig())


def _cfg(**kw):
    base = dict(model="unet", model_kwargs={"base": 8, "depth": 2}, steps=40, val_every=20, batch=4, lr_backbone=3e-3,
                lr_head=3e-3, augment=AugmentConfig(crop=48), seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_training_lowers_the_loss_and_keeps_best_and_last(slices, tmp_path):
    result = drive(iter_fit(_cfg(), slices[:3], slices[3:], tmp_path / "run"))
    losses = [h["loss"] for h in result.history]
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    assert result.last.exists() and result.best is not None and result.best.exists()
    vals = [h["val"] for h in result.history if "val" in h]
    assert len(vals) == 2 and set(vals[0]) >= {"f1", "rand_error", "pixel_error"}
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 40
    assert load_checkpoint(result.last).step == 40


def test_all_loss_terms_and_weight_maps_train(slices, tmp_path):
    loss = LossConfig(f1=0.5, focal=0.5, edge=0.4, skeleton_recall=0.25, weighted_bce=0.25, dice=0.1, bce=0.1)
    result = drive(iter_fit(_cfg(steps=4, loss=loss), slices[:2], [], tmp_path / "run"))
    assert set(result.history[-1]["terms"]) == {"f1", "focal", "edge", "skeleton_recall", "weighted_bce", "dice", "bce"}


def test_cancel_leaves_a_valid_last_checkpoint_and_resume_continues(slices, tmp_path):
    steps = []
    progress = CallbackProgress(lambda e: steps.append(e.done), lambda: len(steps) >= 5)
    with pytest.raises(Cancelled):
        drive(iter_fit(_cfg(steps=30), slices[:3], slices[3:], tmp_path / "run"), progress)
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last.step == 5 and last.provenance["cancelled"] is True and last.optimizer is not None
    result = drive(iter_fit(_cfg(steps=8), slices[:3], [], tmp_path / "run", resume=last))
    assert result.steps == 8 and len(result.history) == 3


def test_finetune_from_checkpoint_with_replay(slices, tmp_path):
    first = drive(iter_fit(_cfg(steps=3), slices[:2], [], tmp_path / "a"))
    init = load_checkpoint(first.last)
    result = drive(iter_fit(_cfg(steps=3, replay_fraction=0.5), slices[2:3], [], tmp_path / "b", init=init,
                            replay=slices[:2]))
    assert load_checkpoint(result.last).arch_kwargs == {"base": 8, "depth": 2}


def test_sampler_mixes_replay_at_the_requested_fraction(slices):
    marked = [s for s in slices[:1]]
    sampler = CropSampler(marked, _cfg(replay_fraction=0.25), replay=slices[1:2])
    sampler.train[0]["image"] = np.zeros_like(sampler.train[0]["image"])
    sampler.replay[0]["image"] = np.full_like(sampler.replay[0]["image"], 5.0)
    draws = [float(sampler.sample()["image"].mean() > 1) for _ in range(800)]
    assert abs(np.mean(draws) - 0.25) < 0.05


def test_corrected_pixels_get_boosted_weight(slices):
    from napari_neuroedge.training.dataset import LabelledSlice, loss_targets

    sl = slices[0]
    corrected = np.zeros_like(sl.label)
    corrected[10:20, 10:20] = 1
    maps = loss_targets(LabelledSlice(sl.image, sl.label, None, corrected), LossConfig(), corrected_weight=3.0)
    assert maps["weight"][15, 15] == 3.0 and maps["weight"][50, 50] == 1.0


def test_time_limit_stops_training(slices, tmp_path):
    result = drive(iter_fit(_cfg(steps=10_000, time_limit_s=1.0), slices[:2], [], tmp_path / "run"))
    assert 1 <= result.steps < 10_000
