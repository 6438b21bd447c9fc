"""Precision policy: auto picks bf16 only on CPUs with native bf16, fp16 on CUDA, fp32 elsewhere; forced bf16
runs (emulated where the CPU lacks it) and stays close to fp32; training records what it used."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from napari_neuroedge.config import AugmentConfig, NormConfig, TileConfig, TrainConfig
from napari_neuroedge.inference import precision as prec
from napari_neuroedge.inference.predict import TorchPredictor, predict_array


def test_auto_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: True)
    assert prec.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: False)
    assert prec.resolve_precision("auto", "cpu") == "fp32"
    assert prec.resolve_precision("auto", "cuda") == "fp16"
    assert prec.resolve_precision("auto", "mps") == "fp32"
    assert prec.resolve_precision("bf16", "cpu") == "bf16"  # on request, even where emulated
    with pytest.raises(ValueError, match="fp16 is for CUDA"):
        prec.resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="unknown precision"):
        prec.resolve_precision("int8", "cpu")


def test_native_bf16_probe_matches_torch():
    expected = bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    assert prec.cpu_has_native_bf16() is expected


def test_bf16_predictor_close_to_fp32_and_channels_last():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 3, padding=1))
    x = np.random.default_rng(0).random((2, 1, 32, 32)).astype(np.float32)
    p32 = TorchPredictor(net, "cpu", precision="fp32")
    p16 = TorchPredictor(net, "cpu", precision="bf16")
    assert p32.describe() == "cpu, fp32, channels_last" and p16.describe() == "cpu, bf16 autocast, channels_last"
    assert TorchPredictor(net, "cpu", amp=False).precision == "fp32"
    a, b = p32(x), p16(x)
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape == (2, 1, 32, 32)
    assert 0 < np.abs(a - b).max() < 0.02  # bf16 really ran (not identical) and is close


def test_training_records_its_precision(tmp_path):
    from napari_neuroedge.models.checkpoint import load_checkpoint
    from napari_neuroedge.progress import drive
    from napari_neuroedge.io.sample import synthetic_em
    from napari_neuroedge.training.dataset import slices_from_arrays
    from napari_neuroedge.training.loop import iter_fit

    stack = synthetic_em((1, 64, 64), cell_size=20, seed=0)
    train = slices_from_arrays(stack.image, stack.membrane, NormConfig())
    cfg = TrainConfig(model_kwargs={"base": 4, "depth": 2}, steps=6, batch=2, val_every=6, precision="bf16",
                      augment=AugmentConfig(crop=32, elastic_p=0.0), device="cpu", seed=0)
    result = drive(iter_fit(cfg, train, train, tmp_path / "run"))
    losses = [h["loss"] for h in result.history]
    assert all(np.isfinite(losses))
    ckpt = load_checkpoint(result.last)
    assert ckpt.provenance["precision"] == "bf16" and ckpt.train_config["precision"] == "bf16"


@pytest.mark.isbi
@pytest.mark.slow
def test_bf16_quality_gate_on_isbi(isbi_dir):
    """On ISBI slices 20-24 (no TTA) bf16 autocast and fp32 give the same pixel error, boundary F1 and Rand
    error within 0.002: bf16 may be chosen automatically without changing the result."""
    from napari_neuroedge.inference.postprocess import instances_from_probability
    from napari_neuroedge.metrics import evaluate
    from napari_neuroedge.models.checkpoint import load_model

    model, ckpt = load_model("default")
    vol = tifffile.imread(isbi_dir / "train-volume.tif")[20:25]
    gt = (tifffile.imread(isbi_dir / "train-labels.tif")[20:25] == 0).astype(np.uint8)
    res = {}
    for name in ("fp32", "bf16"):
        prob = predict_array(vol, TorchPredictor(model, "cpu", precision=name), tile=TileConfig(), norm=ckpt.norm)
        res[name] = evaluate(prob, gt, instances_fn=instances_from_probability, threshold=ckpt.threshold)
    print(res)
    for key in ("pixel_error", "boundary_f1", "rand_error"):
        assert abs(res["fp32"][key] - res["bf16"][key]) < 0.002, key
