"""Checkpoints round-trip, are written atomically without overwriting, and bad files say what is wrong."""

from __future__ import annotations

import json

import pytest
import torch

from napari_neuroedge.io.atomic import OutputExistsError
from napari_neuroedge.config import NormConfig
from napari_neuroedge.models.checkpoint import CheckpointError, load_checkpoint, load_model, make_checkpoint, save_checkpoint
from napari_neuroedge.models.registry import build_model, bundled_models


def _small(tmp_path):
    torch.manual_seed(0)
    model = build_model("unet", base=4, depth=2)
    ckpt = make_checkpoint(model, "unet", {"base": 4, "depth": 2}, NormConfig(mode="meanstd", mean=0.4, std=0.2),
                           {"steps": 3}, {"data": "synthetic"})
    return model, save_checkpoint(ckpt, tmp_path / "m.pt")


def test_round_trip_same_outputs(tmp_path):
    model, path = _small(tmp_path)
    loaded, ckpt = load_model(path)
    x = torch.rand(1, 1, 16, 16)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    assert ckpt.norm == NormConfig(mode="meanstd", mean=0.4, std=0.2)
    assert ckpt.provenance["data"] == "synthetic" and "torch" in ckpt.provenance["versions"]
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["arch_kwargs"] == {"base": 4, "depth": 2} and meta["train_config"] == {"steps": 3}


def test_never_overwrites(tmp_path):
    _, path = _small(tmp_path)
    before = path.read_bytes()
    with pytest.raises(OutputExistsError):
        _small(tmp_path)
    assert path.read_bytes() == before


def test_truncated_and_foreign_files(tmp_path):
    _, path = _small(tmp_path)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(cut)
    foreign = tmp_path / "sd.pt"
    torch.save(build_model("unet", base=4, depth=2).state_dict(), foreign)
    with pytest.raises(CheckpointError, match="not a napari-neuroedge checkpoint"):
        load_checkpoint(foreign)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(text)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_wrong_architecture_is_reported(tmp_path):
    _, path = _small(tmp_path)
    ckpt = load_checkpoint(path)
    ckpt.arch_kwargs = {"base": 8, "depth": 2}
    with pytest.raises(CheckpointError, match="do not fit|cannot build"):
        ckpt.build()
    ckpt.arch = "nonsense"
    with pytest.raises(CheckpointError, match="nonsense"):
        ckpt.build()


def test_bundled_default_loads():
    assert "default" in bundled_models()
    model, ckpt = load_model("default")
    assert ckpt.arch == "unet"
    with torch.no_grad():
        out = model(torch.rand(1, 1, 32, 32))
    assert out.shape == (1, 1, 32, 32)
