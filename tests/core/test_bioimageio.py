"""bioimage.io packages: export (`neuroedge package`), spec validation, bioimageio.core prediction vs ours, import."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_neuroedge.cli import main
from napari_neuroedge.config import NormConfig, TileConfig
from napari_neuroedge.inference.predict import TorchPredictor, predict_array
from napari_neuroedge.models.checkpoint import load_model, save_checkpoint

pytest.importorskip("bioimageio.core")
pydantic = pytest.importorskip("pydantic")


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """(checkpoint path, package zip) of a tiny U-Net 'fine-tuned from default on ISBI 2012', threshold 0.55."""
    from napari_neuroedge.config import AugmentConfig, TrainConfig
    from napari_neuroedge.models.checkpoint import load_checkpoint
    from napari_neuroedge.progress import drive
    from napari_neuroedge.io.sample import synthetic_em
    from napari_neuroedge.training.dataset import slices_from_arrays
    from napari_neuroedge.training.loop import iter_fit

    root = tmp_path_factory.mktemp("bioimageio")
    stack = synthetic_em((2, 96, 96), cell_size=24, seed=3)  # a few seconds of training: a real, non-flat map
    cfg = TrainConfig(model="unet", model_kwargs={"base": 4, "depth": 2}, steps=30, batch=4, val_every=10_000,
                      lr_backbone=0.01, lr_head=0.01, augment=AugmentConfig(crop=64, elastic_p=0.0), threads=1,
                      device="cpu", seed=0)
    result = drive(iter_fit(cfg, slices_from_arrays(stack.image, stack.membrane, NormConfig()), [], root / "run",
                            provenance={"name": "tiny-ft", "data": "../shared/data/isbi2012",
                                        "finetuned_from": "default"}))
    path = save_checkpoint(replace(load_checkpoint(result.last), threshold=0.55, optimizer=None), root / "tiny-ft.pt")
    out = root / "tiny-ft.zip"
    assert main(["package", str(path), "-o", str(out)]) == 0
    return path, out


def _ours(model_path, raw, tile=256):
    """Our pipeline without TTA in fp32 (bioimageio.core's arithmetic; ``auto`` would pick bf16 on CPUs with
    native bf16, 5e-3 away): a 256 px slice is one tile (no mirror context), as bioimageio.core runs it; tile 128
    really tiles it."""
    model, ckpt = load_model(model_path)
    return predict_array(raw, TorchPredictor(model, "cpu", precision="fp32"), tile=TileConfig(tile=tile),
                         norm=ckpt.norm)


def test_package_validates_with_provenance_terms_and_documentation(package):
    from bioimageio.spec import load_model_description

    _, zip_path = package
    descr = load_model_description(str(zip_path), perform_io_checks=True)
    assert descr.format_version.startswith("0.5") and descr.name == "tiny-ft"
    assert {w for w, d in descr.weights if d is not None} == {"pytorch_state_dict", "torchscript"}
    steps = [p for p in descr.inputs[0].preprocessing if str(p.id) != "ensure_dtype"]
    assert [str(p.id) for p in steps] == ["scale_range"]
    kw = steps[0].kwargs
    assert (kw.min_percentile, kw.max_percentile) == (1.0, 99.5)
    assert str(descr.license) == "CC-BY-NC-4.0"  # ISBI 2012 terms: non-commercial
    dois = {str(c.doi) for c in descr.cite}
    assert {"10.1007/978-3-319-24574-4_28", "10.1371/journal.pbio.1000502"} <= dois
    ours = descr.config.model_dump()["neuroedge"]
    assert ours["threshold"] == 0.55 and ours["parent"] == ["default"]
    assert ours["training_data"] == ["../shared/data/isbi2012"]
    names = zipfile.ZipFile(zip_path).namelist()
    assert {"cover.png", "README.md", "architecture.py", "test_input.npy", "test_output.npy"} <= set(names)
    doc = zipfile.ZipFile(zip_path).read("README.md").decode()
    assert "Test-time augmentation" in doc and "probability >= 0.55" in doc and "non-commercial" in doc


def test_bioimageio_core_prediction_matches_ours_without_tta(package):
    from bioimageio.core import predict
    from bioimageio.spec import load_model_description

    from napari_neuroedge.models.bioimageio.export import test_slice

    ckpt_path, zip_path = package
    raw = test_slice()
    descr = load_model_description(str(zip_path))
    out = predict(model=descr, inputs=raw.astype(np.float32)[None, None])
    theirs = np.asarray(next(iter(out.members.values())).data)[0, 0]
    ours = _ours(ckpt_path, raw)
    assert theirs.shape == ours.shape == (256, 256)
    assert ours.std() > 0.05  # not a flat map
    print("max |bioimageio.core - ours|", np.abs(theirs - ours).max(), "std", ours.std())
    assert np.abs(theirs - ours).max() < 1e-4
    stored = np.load(zipfile.ZipFile(zip_path).open("test_output.npy"))[0, 0]
    assert np.abs(stored - ours).max() < 1e-5


def test_imported_package_predicts_like_the_checkpoint(package, tmp_path):
    import tifffile

    from napari_neuroedge.models.bioimageio.export import test_slice

    ckpt_path, zip_path = package
    from napari_neuroedge.models.bioimageio.export import SAMPLE

    raw = np.asarray(tifffile.imread(SAMPLE)[1])  # another slice, tiled with mirror context (128 px tiles)
    ours, theirs = _ours(ckpt_path, raw, 128), _ours(zip_path, raw, 128)
    assert np.abs(theirs - ours).max() < 1e-5
    folder = tmp_path / "unzipped"
    zipfile.ZipFile(zip_path).extractall(folder)
    assert np.abs(_ours(folder / "rdf.yaml", raw, 128) - ours).max() < 1e-5
    # through the CLI, with TTA, tiles smaller than the image and the package's threshold (0.55)
    src = tmp_path / "slice.tif"
    tifffile.imwrite(src, test_slice(200))
    rc = main(["predict", str(src), "-o", str(tmp_path / "m.tif"), "--prob", str(tmp_path / "p.tif"), "--model",
               str(zip_path), "--tile", "128", "--tta", "6", "--quiet"])
    assert rc == 0
    prob, mem = tifffile.imread(tmp_path / "p.tif"), tifffile.imread(tmp_path / "m.tif")
    np.testing.assert_array_equal(mem, (prob >= 0.55).astype(np.uint8))
    assert 0.05 < mem.mean() < 0.95
    if __import__("importlib").util.find_spec("dask") is not None:  # blockwise workers load the package too
        rc = main(["predict", str(src), "-o", str(tmp_path / "mb.tif"), "--prob", str(tmp_path / "pb.zarr"),
                   "--model", str(zip_path), "--tile", "128", "--tta", "6", "--scheduler", "sync", "--quiet"])
        assert rc == 0
        from napari_neuroedge.io.stacks import open_stack

        assert np.abs(np.asarray(open_stack(tmp_path / "pb.zarr").data[...]) - prob).max() < 1e-5


def test_package_by_fine_tuned_name(package, tmp_path, monkeypatch):
    import shutil

    from bioimageio.spec import load_model_description

    ckpt_path, _ = package
    monkeypatch.setenv("NEUROEDGE_MODELS_DIR", str(tmp_path / "models"))
    (tmp_path / "models").mkdir()
    shutil.copy(ckpt_path, tmp_path / "models" / "my-finetune.pt")
    out = tmp_path / "named.zip"
    assert main(["package", "my-finetune", "-o", str(out), "--name", "my-finetune"]) == 0
    assert load_model_description(str(out)).name == "my-finetune"


def test_package_errors_are_one_line(package, tmp_path, capsys):
    ckpt_path, zip_path = package
    assert main(["package", str(ckpt_path), "-o", str(zip_path)]) == 2  # exists: never overwritten
    assert main(["package", str(ckpt_path), "-o", str(tmp_path / "x.tar")]) == 2
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    assert main(["predict", str(ckpt_path), "-o", str(tmp_path / "o.tif"), "--model", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("neuroedge: error: ") for line in err) and len(err) == 3


@pytest.mark.slow
def test_bioimageio_test_passes(package):
    _, zip_path = package
    proc = subprocess.run([sys.executable, "-m", "bioimageio.core", "test", str(zip_path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "passed" in proc.stdout
