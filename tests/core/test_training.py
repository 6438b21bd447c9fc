"""The training loop lowers the loss, validates, checkpoints, resumes and survives a cancel."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_neuroedge.config import AugmentConfig, LossConfig, NormConfig, TrainConfig
from napari_neuroedge.models.checkpoint import load_checkpoint
from napari_neuroedge.progress import CallbackProgress, Cancelled, drive
from napari_neuroedge.io.sample import synthetic_em
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


def test_ema_weight_warms_up_then_holds_the_decay():
    from napari_neuroedge.training.loop import ema_weight

    assert ema_weight(0.999, 1) == pytest.approx(2 / 11)
    assert ema_weight(0.999, 90) == pytest.approx(91 / 100)
    assert ema_weight(0.999, 100_000) == 0.999
    assert ema_weight(0.5, 1) == pytest.approx(2 / 11) and ema_weight(0.5, 9) == 0.5


def test_ema_averages_weights_and_bn_statistics_by_hand():
    import torch

    from napari_neuroedge.training.loop import _ema_of, ema_weight

    net = torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False), torch.nn.BatchNorm1d(1))
    ema = _ema_of(net, decay=0.9)
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
        net[1].running_mean.fill_(4.0)
        ema.update_parameters(net)  # first update copies
        net[0].weight.copy_(torch.tensor([[3.0, 6.0]]))
        net[1].running_mean.fill_(0.0)
        net[1].num_batches_tracked.fill_(7)
        ema.update_parameters(net)
    w = ema_weight(0.9, 1)  # 2/11
    avg = ema.module
    assert torch.allclose(avg[0].weight, torch.tensor([[1 * w + 3 * (1 - w), 2 * w + 6 * (1 - w)]]))
    assert torch.allclose(avg[1].running_mean, torch.tensor([4 * w]))
    assert int(avg[1].num_batches_tracked) == 7
    assert torch.equal(net[0].weight, torch.tensor([[3.0, 6.0]]))  # the trained model is untouched


def test_ema_run_saves_the_averaged_weights(slices, tmp_path):
    import torch

    plain = drive(iter_fit(_cfg(steps=12), slices[:3], slices[3:], tmp_path / "plain"))
    averaged = drive(iter_fit(_cfg(steps=12, ema_decay=0.9), slices[:3], slices[3:], tmp_path / "ema"))
    a, b = load_checkpoint(plain.last).state_dict, load_checkpoint(averaged.last).state_dict
    assert a.keys() == b.keys()
    # same seed, same crops: the raw weights are the same, so any difference is the averaging
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())
    assert diff > 1e-4
    assert "val" in averaged.history[-1] and np.isfinite(averaged.history[-1]["val"]["pixel_error"])
    assert json.loads((tmp_path / "ema" / "config.json").read_text())["ema_decay"] == 0.9
    assert all(torch.isfinite(v.float()).all() for v in b.values())


def test_keep_validated_saves_each_validated_step_with_its_metrics(slices, tmp_path):
    result = drive(iter_fit(_cfg(steps=8, val_every=4, keep_validated=True), slices[:3], slices[3:], tmp_path / "r"))
    kept = sorted(p.name for p in (tmp_path / "r").glob("step-*.pt"))
    assert kept == ["step-000004.pt", "step-000008.pt"]
    for name, h in zip(kept, [h for h in result.history if "val" in h]):
        ckpt = load_checkpoint(tmp_path / "r" / name)
        assert ckpt.optimizer is None and ckpt.step == int(name[5:11])
        assert ckpt.provenance["val"] == h["val"]
    # the last validated weights are the run's last checkpoint
    last = load_checkpoint(result.last).state_dict
    step8 = load_checkpoint(tmp_path / "r" / "step-000008.pt").state_dict
    assert all(np.array_equal(last[k].numpy(), step8[k].numpy()) for k in last)


def test_validation_with_tta_averages_flips_and_rotations(slices):
    import torch

    from napari_neuroedge.training.loop import validate

    pointwise = torch.nn.Conv2d(1, 1, 1)  # commutes with every flip and rotation: TTA must change nothing
    with torch.no_grad():
        pointwise.weight.fill_(-3.0)
        pointwise.bias.fill_(0.5)
    cpu = torch.device("cpu")
    assert validate(pointwise, slices[3:], cpu, tile=64, tta=6) == pytest.approx(
        validate(pointwise, slices[3:], cpu, tile=64, tta=1), abs=1e-9)
    # a model that sees direction (a 3x3 edge detector that fires to the right only) is changed by TTA
    directional = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        directional.weight.zero_()
        directional.weight[0, 0, 1, 2], directional.weight[0, 0, 1, 1] = 4.0, -4.0
    one, six = validate(directional, slices[3:], cpu, tile=64), validate(directional, slices[3:], cpu, tile=64, tta=6)
    assert one["pixel_error"] != pytest.approx(six["pixel_error"], abs=1e-4)
