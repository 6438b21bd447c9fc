"""The neuroedge CLI end to end on small synthetic data: outputs, shapes, dtypes and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

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

    from napari_neuroedge.io.overlay import overlay_rows as _overlay_rows

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


VNC_LABELS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "vnc" / "stack1-membranes.tif"


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("neuroedge: error:"), err
    return err[0]


def test_evaluate_refuses_an_inverted_label_convention(tmp_path, synth, capsys):
    """Labels read the wrong way round give exit 2 and one line naming the flag, not pixel error 0.9 and exit 0."""
    gt, pred = tmp_path / "gt.tif", tmp_path / "pred.tif"
    tifffile.imwrite(gt, synth.membrane, photometric="minisblack")  # 1 = membrane
    assert 0.1 < synth.membrane.mean() < 0.5
    tifffile.imwrite(pred, synth.membrane, photometric="minisblack")
    assert main(["evaluate", str(pred), str(gt), "--gt-membrane-value", "0"]) == 2  # "membrane" = the cells
    assert "--gt-membrane-value 0 makes" in _one_line_error(capsys)
    tifffile.imwrite(tmp_path / "gt255.tif", synth.membrane * 255, photometric="minisblack")
    assert main(["evaluate", str(pred), str(tmp_path / "gt255.tif")]) == 2  # no pixel equals the default 1
    line = _one_line_error(capsys)
    assert "--gt-membrane-value 1" in line and "0, 255" in line
    # --force evaluates anyway (a crop may really be mostly membrane)
    assert main(["evaluate", str(pred), str(gt), "--gt-membrane-value", "0", "--force"]) == 0
    assert json.loads(capsys.readouterr().out)["pixel_error"] == 1.0
    # a prediction that disagrees on most pixels may be inverted, or just a bad model: its true numbers and a warning
    assert main(["evaluate", str(pred), str(gt), "--pred-membrane-value", "0"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["pixel_error"] == 1.0
    [line] = err.strip().splitlines()
    assert "warning: prediction and ground truth disagree on 100%" in line and "--pred-membrane-value" in line
    assert main(["evaluate", str(pred), str(gt)]) == 0 and capsys.readouterr().err == ""
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "default 1" in " ".join(capsys.readouterr().out.split())


def test_evaluate_on_vnc_labels_refuses_the_isbi_convention(tmp_path, capsys):
    """The VNC labels are 1 = membrane: the default is right, ``--gt-membrane-value 0`` (ISBI's) is refused."""
    if not VNC_LABELS.exists():
        pytest.skip(f"VNC labels not found at {VNC_LABELS}")
    first = tifffile.imread(VNC_LABELS, key=0)[None]
    tifffile.imwrite(tmp_path / "pred.tif", first, photometric="minisblack")
    args = ["evaluate", str(tmp_path / "pred.tif"), str(VNC_LABELS), "--gt-slices", "0:1"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["pixel_error"] == 0.0
    assert main([*args, "--gt-membrane-value", "0"]) == 2
    line = _one_line_error(capsys)
    assert f"--gt-membrane-value 0 makes {(first == 0).mean():.0%} of the ground truth membrane" in line


def test_evaluate_names_its_instances_and_labels_agree_with_a_binary_probability(tmp_path, synth, capsys):
    """The same binary prediction as uint8 labels and as a 0/1 probability gives the same connected-components
    Rand error; the probability's headline is the watershed, named as such, with its thresholds."""
    gt = tmp_path / "gt.tif"
    tifffile.imwrite(gt, synth.membrane, photometric="minisblack")
    pred = synth.membrane.copy()
    pred[:, ::12, :] = 0  # 1 px gaps in every membrane across these rows: components merge cells, the watershed not
    tifffile.imwrite(tmp_path / "labels.tif", pred, photometric="minisblack")
    tifffile.imwrite(tmp_path / "prob.tif", pred.astype(np.float32), photometric="minisblack")
    results = {}
    for name in ("labels", "prob"):
        assert main(["evaluate", str(tmp_path / f"{name}.tif"), str(gt)]) == 0
        results[name] = json.loads(capsys.readouterr().out)
    labels, prob = results["labels"], results["prob"]
    assert labels["instances"] == "components" and labels["threshold"] is None and labels["seed_threshold"] is None
    assert labels["rand_error"] == labels["rand_error_components"] and "rand_error_watershed" not in labels
    assert prob["instances"] == "watershed" and (prob["threshold"], prob["seed_threshold"]) == (0.5, 0.3)
    assert prob["rand_error"] == prob["rand_error_watershed"]
    assert prob["rand_error_components"] == labels["rand_error_components"] > 0.05
    assert prob["rand_error_watershed"] < 0.5 * prob["rand_error_components"]  # two methods, two figures
    assert prob["pixel_error"] == labels["pixel_error"] and prob["boundary_f1"] == labels["boundary_f1"]
    # a real probability and the labels predict writes from it (at the threshold evaluate is told): same components
    rng = np.random.default_rng(0)
    smooth = np.clip(synth.membrane * 0.8 + rng.normal(0.1, 0.15, synth.membrane.shape), 0, 1).astype(np.float32)
    tifffile.imwrite(tmp_path / "p.tif", smooth, photometric="minisblack")
    tifffile.imwrite(tmp_path / "m.tif", (smooth >= 0.6).astype(np.uint8), photometric="minisblack")
    assert main(["evaluate", str(tmp_path / "p.tif"), str(gt), "--threshold", "0.6"]) == 0
    from_prob = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(tmp_path / "m.tif"), str(gt)]) == 0
    assert from_prob["rand_error_components"] == json.loads(capsys.readouterr().out)["rand_error"]
    assert from_prob["threshold"] == 0.6


def test_slices_past_the_stack_are_refused_by_every_command(tmp_path, stack_path, synth, tiny_ckpt, capsys):
    """A range past the end of the 3-slice stack is one line naming the flag, not a silently shorter output."""
    past = "reach past a stack of 3 slices"
    lab = tmp_path / "lab.tif"
    tifffile.imwrite(lab, synth.membrane, photometric="minisblack")
    runs = {"predict": ["predict", str(stack_path), "-o", str(tmp_path / "m.tif"), "--model", str(tiny_ckpt),
                        "--tile", "64", "--quiet", "--slices", "2:5"],
            "calibrate": ["calibrate", str(stack_path), str(lab), "--model", str(tiny_ckpt), "-o",
                          str(tmp_path / "c.pt"), "--tta", "1", "--quiet", "--slices", "1:9"],
            "export": ["export", str(stack_path), str(lab), "-o", str(tmp_path / "set"), "--slices", "0:4"]}
    for name, argv in runs.items():
        assert main(argv) == 2, name
        assert f"--slices: slices '{argv[-1]}' {past}" in _one_line_error(capsys), name
    assert not any((tmp_path / n).exists() for n in ("m.tif", "c.pt", "set"))
    assert main(["export", str(stack_path), str(lab), "-o", str(tmp_path / "set"), "--slices", "0:3"]) == 0  # all 3
    capsys.readouterr()
    for argv in (["train", "--data", str(tmp_path / "set"), "--train-slices", "1:7", "--steps", "1"],
                 ["finetune", "--from", str(tiny_ckpt), "--data", str(tmp_path / "set"), "--val-data",
                  str(tmp_path / "set"), "--val-slices", "2:4", "--steps", "1"]):
        assert main([*argv, "-o", str(tmp_path / "t.pt"), "--quiet"]) == 2
        assert past in _one_line_error(capsys) and not (tmp_path / "t.pt").exists()
    # evaluate: a prediction of --slices 0:2 against the whole GT names --gt-slices, and --gt-slices is checked too
    tifffile.imwrite(tmp_path / "pred.tif", synth.membrane[:2], photometric="minisblack")
    assert main(["evaluate", str(tmp_path / "pred.tif"), str(lab)]) == 2
    assert "the prediction has 2 of the 3 slices; name them with --gt-slices" in _one_line_error(capsys)
    assert main(["evaluate", str(tmp_path / "pred.tif"), str(lab), "--gt-slices", "0:1"]) == 2
    assert "--gt-slices 0:1 selects 1 slices, the prediction has 2" in _one_line_error(capsys)
    assert main(["evaluate", str(tmp_path / "pred.tif"), str(lab), "--gt-slices", "2:4"]) == 2
    assert f"--gt-slices: slices '2:4' {past}" in _one_line_error(capsys)
    assert main(["evaluate", str(tmp_path / "pred.tif"), str(lab), "--gt-slices", "1:3"]) == 0
    capsys.readouterr()
    tifffile.imwrite(tmp_path / "one.tif", synth.membrane[2], photometric="minisblack")  # a 2D slice: --gt-slices 2
    assert main(["evaluate", str(tmp_path / "one.tif"), str(lab), "--gt-slices", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["pixel_error"] == 0.0


def test_device_line_stands_before_the_bar(tmp_path, stack_path, tiny_ckpt, capsys):
    """"running on cpu..." is a line of its own, said before the progress bar starts, not written into its line."""
    assert main(["predict", str(stack_path), "-o", str(tmp_path / "m.tif"), "--model", str(tiny_ckpt), "--tile", "64",
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    at = err.index("running on cpu")
    assert at == 0 or err[at - 1] == "\n"
    assert "tile" not in err[:at] and "\r" not in err[:at]  # no bar yet
    assert "\n" in err[at:] and "tile" not in err[at:err.index("\n", at)]
    assert "0/" in err[at:] and "tile" in err[at:]  # the bar follows, with its total from the start
    assert err.rstrip().endswith(f"wrote {tmp_path / 'm.tif'}")


def test_sample_says_what_it_wrote_and_never_overwrites(tmp_path, capsys):
    img, lab = tmp_path / "s.tif", tmp_path / "l.tif"
    assert main(["sample", "-o", str(img), "--labels", str(lab), "--slices", "2", "--size", "64"]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said == {"image": str(img), "labels": str(lab), "shape": [2, 64, 64], "dtype": "uint8"}
    assert tifffile.imread(img).shape == tifffile.imread(lab).shape == (2, 64, 64)
    assert main(["sample", "-o", str(tmp_path / "s2.tif"), "--labels", str(lab)]) == 2  # labels exist: neither written
    assert "already exists" in _one_line_error(capsys) and not (tmp_path / "s2.tif").exists()


def test_finetune_flags_reach_every_option_field():
    """finetune_options follows FinetuneOptions' fields: no flag gives the one-click defaults, and every field but
    recalibrate_threshold (no flag: a fine-tune always recalibrates) is set by its flag."""
    from dataclasses import fields

    from napari_neuroedge.cli import build_parser, finetune_options
    from napari_neuroedge.config import FinetuneOptions, parse_loss

    base = ["finetune", "--from", "default", "--data", "d", "-o", "x.pt"]
    assert finetune_options(build_parser().parse_args(base)) == FinetuneOptions()
    flags = ["--steps", "7", "--time-limit-s", "5", "--batch", "3", "--crop", "96", "--lr", "1e-4", "--lr-head",
             "4e-4", "--loss", "bce=1", "--val-every", "3", "--ema", "0.9", "--val-tta", "6", "--keep-validated",
             "--seed", "5", "--device", "cpu", "--threads", "1", "--replay-fraction", "0.5", "--corrected-weight", "2",
             "--holdout", "0.5", "--parent-weight", "0.1", "--precision", "fp32", "--validation", "blocks",
             "--select", "f1-rand"]
    opts, default = finetune_options(build_parser().parse_args(base + flags)), FinetuneOptions()
    assert {f.name for f in fields(opts) if getattr(opts, f.name) == getattr(default, f.name)} == {
        "recalibrate_threshold"}
    assert (opts.steps, opts.time_limit_s, opts.crop, opts.holdout, opts.val_tta, opts.keep_validated) == (
        7, 5.0, 96, 0.5, 6, True)
    assert opts.lr == 4e-4 and opts.backbone_lr_factor == pytest.approx(0.25) and opts.cross_slices is False
    assert opts.loss == parse_loss("bce=1") and opts.loss.bce == 1.0 and opts.loss.f1 == 0.0
    only_backbone = finetune_options(build_parser().parse_args([*base, "--lr", "1e-4"]))
    assert (only_backbone.lr, only_backbone.backbone_lr_factor) == (1e-4, 1.0)


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
    from napari_neuroedge.io.sample import synthetic_em

    big = synthetic_em((1200, 1300), cell_size=30, seed=9)
    tifffile.imwrite(tmp_path / "big.tif", big.image, photometric="minisblack")  # memory-mapped on read
    tifffile.imwrite(tmp_path / "big_labels.tif", big.membrane, photometric="minisblack")
    rc = main(["finetune", "--from", str(tiny_ckpt), "--data", str(tmp_path / "big.tif"), "--labels",
               str(tmp_path / "big_labels.tif"), "--windows", "5", "--window", "256", "--steps", "2", "--crop", "64",
               "--batch", "2", "-o", str(tmp_path / "ft.pt"), "--quiet"])
    assert rc == 0
    slices = load_checkpoint(tmp_path / "ft.pt").provenance["train_slices"]
    assert len(slices) == 5 and all(s["source"].endswith("big.tif") for s in slices)
