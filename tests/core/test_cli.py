"""The neuroedge CLI end to end on small synthetic data: outputs, shapes, dtypes and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from napari_neuroedge.cli import main
from napari_neuroedge.config import NormConfig
from napari_neuroedge.models.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from napari_neuroedge.models.registry import build_model


@pytest.fixture(scope="module")
def stack_path(tmp_path_factory, synth):
    path = tmp_path_factory.mktemp("in") / "stack.tif"
    tifffile.imwrite(path, synth.image, photometric="minisblack")
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "tiny.pt"
    save_checkpoint(make_checkpoint(build_model("unet", base=4, depth=2), "unet", {"base": 4, "depth": 2},
                                    NormConfig()), path)
    return path


def test_predict_writes_every_output(tmp_path, stack_path, tiny_ckpt, synth):
    out = tmp_path / "mem.tif"
    rc = main(["predict", str(stack_path), "-o", str(out), "--model", str(tiny_ckpt), "--tile", "64", "--tta", "6",
               "--prob", str(tmp_path / "p.tif"), "--instances", str(tmp_path / "i.zarr"), "--uncertainty",
               str(tmp_path / "u.tif"), "--overlay", str(tmp_path / "o.png"), "--quiet"])
    assert rc == 0
    mem, prob = tifffile.imread(out), tifffile.imread(tmp_path / "p.tif")
    assert mem.shape == prob.shape == synth.image.shape and mem.dtype == np.uint8 and prob.dtype == np.float32
    np.testing.assert_array_equal(mem, (prob >= 0.5).astype(np.uint8))
    assert 0 <= prob.min() and prob.max() <= 1
    import zarr

    inst = np.asarray(zarr.open(str(tmp_path / "i.zarr"), mode="r")[:])
    assert inst.dtype == np.uint32 and inst.shape == synth.image.shape and inst.max() >= 1
    assert tifffile.imread(tmp_path / "u.tif").min() >= 0
    assert (tmp_path / "o.png").stat().st_size > 1000


def test_overlay_shows_every_predicted_slice_and_names_it(tmp_path, stack_path, tiny_ckpt, synth):
    """--overlay has one captioned row per predicted slice (here slices 1 and 2), not just the middle one."""
    import imageio.v3 as iio

    from napari_neuroedge.overlay import overlay_rows as _overlay_rows

    png = tmp_path / "o.png"
    assert main(["predict", str(stack_path), "-o", str(tmp_path / "m.tif"), "--model", str(tiny_ckpt), "--tile",
                 "64", "--slices", "1:3", "--overlay", str(png), "--quiet"]) == 0
    pic = iio.imread(png)[..., :3].astype(int)
    h, w = synth.image.shape[1:]
    cap, gap = 14, 8
    assert pic.shape == (cap + 2 * (cap + h + gap), 2 * w + gap, 3)
    for row in range(2):
        top = cap + row * (cap + h + gap)
        caption = pic[top:top + cap, :120]
        assert (caption.sum(-1) < 200).sum() > 30  # dark caption text ("slice 1", "slice 2") above each row
        grey = pic[top + cap:top + cap + h, :w]
        plain = grey[..., 0] == grey[..., 1]  # pixels not coloured as membrane show the raw slice
        z = row + 1
        raw = synth.image[z].astype(float)
        corr = np.corrcoef(grey[..., 0][plain], raw[plain])[0, 1]
        assert corr > 0.9, (z, corr)  # row `row` shows slice z (captions are in order)
    title = pic[:cap, :400]
    assert (title.sum(-1) < 200).sum() > 30
    assert _overlay_rows(3) == [0, 1, 2] and _overlay_rows(100)[:2] == [0, 7] and len(_overlay_rows(100)) == 16


def test_predict_default_model_and_slices(tmp_path, stack_path):
    out = tmp_path / "mem.zarr"
    assert main(["predict", str(stack_path), "-o", str(out), "--slices", "1:3", "--tile", "64", "--quiet"]) == 0
    import zarr

    assert zarr.open(str(out), mode="r").shape == (2, 96, 112)


@pytest.mark.parametrize("make,match", [
    (lambda p: tifffile.imwrite(p, np.zeros((40, 40, 3), np.uint8), photometric="rgb"), "RGB"),
    (lambda p: p.write_bytes(b"not a tiff"), "cannot read"),
    (lambda p: None, "no such file"),
])
def test_predict_bad_input_one_line_error(tmp_path, capsys, make, match):
    src = tmp_path / "bad.tif"
    make(src)
    rc = main(["predict", str(src), "-o", str(tmp_path / "o.tif"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("neuroedge: error:") and match in err[0]
    assert not (tmp_path / "o.tif").exists()


def test_predict_refuses_to_overwrite_and_bad_checkpoint(tmp_path, stack_path, capsys):
    existing = tmp_path / "o.tif"
    existing.write_bytes(b"keep me")
    assert main(["predict", str(stack_path), "-o", str(existing), "--quiet"]) == 2
    assert existing.read_bytes() == b"keep me"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02garbage")
    assert main(["predict", str(stack_path), "-o", str(tmp_path / "x.tif"), "--model", str(bad), "--quiet"]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err


def test_evaluate_prints_json(tmp_path, synth, capsys):
    gt = tmp_path / "gt.tif"
    tifffile.imwrite(gt, synth.membrane, photometric="minisblack")
    assert main(["evaluate", str(gt), str(gt)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["pixel_error"] == 0 and res["boundary_f1"] == 1 and res["rand_error"] == pytest.approx(0, abs=1e-9)


def test_export_train_finetune_round_trip(tmp_path, stack_path, synth, tiny_ckpt, capsys):
    lab = tmp_path / "lab.tif"
    tifffile.imwrite(lab, synth.membrane, photometric="minisblack")
    ds = tmp_path / "set"
    assert main(["export", str(stack_path), str(lab), "-o", str(ds), "--slices", "0:2"]) == 0
    assert main(["export", str(stack_path), str(lab), "-o", str(ds), "--slices", "2:3"]) == 0  # adds, new names
    manifest = json.loads((ds / "manifest.json").read_text())
    assert len(manifest["items"]) == 3 and len({i["name"] for i in manifest["items"]}) == 3
    # the synthetic TIFF states no pixel size: the manifest says the unit is unknown rather than guessing
    assert all(i["pixel_size"] is None and i["pixel_size_unit"] == "unknown" for i in manifest["items"])
    sized = tmp_path / "sized.tif"
    tifffile.imwrite(sized, synth.image, imagej=True, resolution=(1 / 4.0, 1 / 4.0), metadata={"spacing": 40.0,
                                                                                                "unit": "nm"})
    assert main(["export", str(sized), str(lab), "-o", str(tmp_path / "set2"), "--slices", "0:1"]) == 0
    [item] = json.loads((tmp_path / "set2" / "manifest.json").read_text())["items"]
    assert item["pixel_size"] == pytest.approx([4.0, 4.0]) and item["pixel_size_unit"] == "nm"
    capsys.readouterr()
    out = tmp_path / "ft.pt"
    rc = main(["finetune", "--from", str(tiny_ckpt), "--data", str(ds), "--val-data", str(ds), "--val-slices", "2:3",
               "--steps", "4", "--val-every", "2", "--crop", "48", "--batch", "2", "--val-tta", "6", "--keep-validated",
               "-o", str(out), "--quiet"])
    assert rc == 0 and out.exists() and (tmp_path / "ft.run" / "last.pt").exists()
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 4 and "f1" in summary["best_val"]
    assert sorted(p.name for p in (tmp_path / "ft.run").glob("step-*.pt")) == ["step-000002.pt", "step-000004.pt"]
    # the run's TrainConfig (the kept model may be the parent, re-labelled, when 4 steps did not beat it)
    assert json.loads((tmp_path / "ft.run" / "config.json").read_text())["val_tta"] == 6
    rc = main(["train", "--data", str(ds), "--model", "unet", "--model-kwargs", '{"base": 4, "depth": 2}',
               "--steps", "3", "--crop", "48", "--batch", "2", "--loss", "bce=1,skeleton_recall=0.5", "--ema", "0.99",
               "-o", str(tmp_path / "t.pt"), "--quiet"])
    assert rc == 0 and (tmp_path / "t.pt").exists()
    cfg = load_checkpoint(tmp_path / "t.pt").train_config
    assert cfg["ema_decay"] == 0.99 and cfg["loss"]["bce"] == 1.0 and cfg["loss"]["skeleton_recall"] == 0.5
    assert cfg["loss"]["f1"] == 0.0 and cfg["loss"]["focal"] == 0.0  # unnamed terms are off
    capsys.readouterr()
    assert main(["train", "--data", str(ds), "--steps", "1", "--loss", "bce=1,dicey=2", "-o", str(tmp_path / "u.pt"),
                 "--quiet"]) == 2
    assert "dicey" in capsys.readouterr().err and not (tmp_path / "u.pt").exists()
    assert main(["train", "--data", str(ds), "--steps", "1", "-o", str(tmp_path / "t.pt"), "--quiet"]) == 2
    # --init continues from a checkpoint's weights (its architecture and measured context win), --augment sets
    # augmentation fields
    with_context = load_checkpoint(tiny_ckpt)
    with_context.context = 24
    save_checkpoint(with_context, tmp_path / "ctx.pt")
    rc = main(["train", "--init", str(tmp_path / "ctx.pt"), "--data", str(ds), "--steps", "2", "--crop", "48", "--batch", "2",
               "--augment", "scale_p=1,gamma_p=0.5,noise_p=0.5", "-o", str(tmp_path / "w.pt"), "--quiet"])
    assert rc == 0
    warm, parent = load_checkpoint(tmp_path / "w.pt"), load_checkpoint(tiny_ckpt)
    assert (warm.arch, warm.arch_kwargs) == (parent.arch, parent.arch_kwargs) and warm.context == 24
    assert warm.train_config["augment"]["scale_p"] == 1.0 and warm.train_config["augment"]["noise_p"] == 0.5
    assert warm.provenance["initialised_from"] == str(tmp_path / "ctx.pt")
    capsys.readouterr()
    assert main(["train", "--data", str(ds), "--steps", "1", "--augment", "zoom=2", "-o", str(tmp_path / "z.pt"),
                 "--quiet"]) == 2
    assert "zoom" in capsys.readouterr().err


def test_help_documents_every_predict_flag(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = capsys.readouterr().out
    for flag in ("--model", "--tile", "--context", "--precision", "--batch", "--tta", "--device", "--prob", "--instances", "--slices"):
        assert flag in text


def test_predict_blockwise_matches_single_process(tmp_path, stack_path, tiny_ckpt):
    import zarr

    single, block = tmp_path / "s.tif", tmp_path / "b.tif"
    assert main(["predict", str(stack_path), "-o", str(single), "--model", str(tiny_ckpt), "--tile", "64",
                 "--prob", str(tmp_path / "sp.tif"), "--quiet"]) == 0
    assert main(["predict", str(stack_path), "-o", str(block), "--model", str(tiny_ckpt), "--tile", "64",
                 "--scheduler", "threads", "--workers", "2", "--prob", str(tmp_path / "bp.zarr"), "--quiet"]) == 0
    np.testing.assert_allclose(np.asarray(zarr.open(str(tmp_path / "bp.zarr"), mode="r")[:]),
                               tifffile.imread(tmp_path / "sp.tif"), atol=1e-5)
    np.testing.assert_array_equal(tifffile.imread(block), tifffile.imread(single))
    assert main(["predict", str(stack_path), "-o", str(tmp_path / "x.tif"), "--scheduler", "threads",
                 "--quiet"]) == 2  # needs --prob .zarr


def test_finetune_on_a_large_image_reads_windows_lazily(tmp_path, tiny_ckpt, capsys):
    from napari_neuroedge.sample import synthetic_em

    big = synthetic_em((1200, 1300), cell_size=30, seed=9)
    tifffile.imwrite(tmp_path / "big.tif", big.image, photometric="minisblack")  # memory-mapped on read
    tifffile.imwrite(tmp_path / "big_labels.tif", big.membrane, photometric="minisblack")
    rc = main(["finetune", "--from", str(tiny_ckpt), "--data", str(tmp_path / "big.tif"), "--labels",
               str(tmp_path / "big_labels.tif"), "--windows", "5", "--window", "256", "--steps", "2", "--crop", "64",
               "--batch", "2", "-o", str(tmp_path / "ft.pt"), "--quiet"])
    assert rc == 0
    slices = load_checkpoint(tmp_path / "ft.pt").provenance["train_slices"]
    assert len(slices) == 5 and all(s["source"].endswith("big.tif") for s in slices)
