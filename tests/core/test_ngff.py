"""OME-Zarr (NGFF) outputs of `neuroedge predict`, read back with the ome-zarr package, and NGFF inputs."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from napari_neuroedge.cli import main
from napari_neuroedge.config import NormConfig
from napari_neuroedge.io.stacks import open_stack
from napari_neuroedge.models.checkpoint import make_checkpoint, save_checkpoint
from napari_neuroedge.models.registry import build_model

pytest.importorskip("ome_zarr")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A 2 x 256 x 256 OME-TIFF at 50 x 4 x 4 nm and a tiny random U-Net checkpoint."""
    from napari_neuroedge.io.sample import synthetic_em

    root = tmp_path_factory.mktemp("ngff_in")
    img = synthetic_em((2, 256, 256), cell_size=30, seed=2).image
    tif = root / "stack.ome.tif"
    tifffile.imwrite(tif, img, ome=True, photometric="minisblack", metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.004, "PhysicalSizeY": 0.004, "PhysicalSizeZ": 0.05})
    torch.manual_seed(0)
    ckpt = root / "tiny.pt"
    save_checkpoint(make_checkpoint(build_model("unet", base=4, depth=2), "unet", {"base": 4, "depth": 2},
                                    NormConfig()), ckpt)
    return tif, ckpt


def _read(path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = list(Reader(parse_url(str(path)))())[0]
    levels = [np.asarray(d) for d in node.data]
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    return node, levels, scales


def test_predict_writes_ngff_pyramids_with_voxel_size(tmp_path, inputs):
    tif, ckpt = inputs
    mem, prob, inst = tmp_path / "mem.ome.zarr", tmp_path / "prob.ome.zarr", tmp_path / "inst.ome.zarr"
    assert main(["predict", str(tif), "-o", str(tmp_path / "m.tif"), "--prob", str(prob), "--model", str(ckpt),
                 "--tile", "64", "--quiet"]) == 0
    node, p, scales = _read(prob)
    t = float(np.median(p[0]))  # the random model's probabilities sit in a narrow band: split them in half
    args = ["predict", str(tif), "-o", str(mem), "--instances", str(inst), "--model", str(ckpt), "--tile", "64",
            "--threshold", f"{t!r}", "--seed-threshold", f"{t!r}", "--quiet"]
    assert main(args) == 0
    assert [a["name"] for a in node.metadata["axes"]] == ["z", "y", "x"]
    assert [a.get("unit") for a in node.metadata["axes"]] == ["nanometer"] * 3
    assert [lv.shape for lv in p] == [(2, 256, 256), (2, 128, 128), (2, 64, 64)]
    assert scales == [[50.0, 4.0, 4.0], [50.0, 8.0, 8.0], [50.0, 16.0, 16.0]]
    assert p[0].dtype == np.float32 and 0.0 <= p[0].min() < p[0].max() <= 1.0
    mean = p[0].reshape(2, 128, 2, 128, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(p[1], mean, atol=1e-6)  # probability: 2x2 mean
    _, m, _ = _read(mem)
    np.testing.assert_array_equal(m[0], (p[0] >= t).astype(np.uint8))
    np.testing.assert_array_equal(m[1], m[0][:, ::2, ::2])  # labels: nearest
    assert 0.4 < m[0].mean() < 0.6
    inode, i, _ = _read(inst)
    assert "image-label" in inode.zarr.root_attrs.get("ome", inode.zarr.root_attrs)
    assert i[0].dtype == np.uint32 and len(np.unique(i[0])) > 3
    assert set(np.unique(i[1])) <= set(np.unique(i[0]))
    # our reader: full resolution, lazily (a zarr array, not numpy), with the voxel size
    back = open_stack(prob)
    assert open_stack(mem).voxel_size == pytest.approx((50.0, 4.0, 4.0))
    assert back.shape == (2, 256, 256) and not isinstance(back.data, np.ndarray)
    assert back.voxel_size == pytest.approx((50.0, 4.0, 4.0))
    np.testing.assert_array_equal(np.asarray(back.data[1]), p[0][1])
    # never overwritten
    assert main(args) == 2


def test_blockwise_threshold_output_can_be_ngff(tmp_path, inputs):
    pytest.importorskip("dask")
    tif, ckpt = inputs
    mem = tmp_path / "mem.ome.zarr"
    assert main(["predict", str(tif), "-o", str(mem), "--prob", str(tmp_path / "p.zarr"), "--model", str(ckpt),
                 "--tile", "64", "--threshold", "0.5", "--scheduler", "sync", "--quiet"]) == 0
    _, m, scales = _read(mem)
    prob = np.asarray(open_stack(tmp_path / "p.zarr").data[...])
    np.testing.assert_array_equal(m[0], (prob >= 0.5).astype(np.uint8))
    assert len(m) == 3 and scales[2] == [50.0, 16.0, 16.0]
    assert main(["predict", str(tif), "-o", str(tmp_path / "m2.tif"), "--prob", str(tmp_path / "p2.ome.zarr"),
                 "--model", str(ckpt), "--scheduler", "sync", "--quiet"]) == 2


def test_instances_and_membranes_as_ngff_labels_of_the_probability(tmp_path, inputs):
    """`--instances P.ome.zarr/labels/NAME` (and `-o` likewise) store the labels inside the probability image as
    the NGFF spec describes, whether P is written by the same command or exists; the ome-zarr reader finds them."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Labels, Multiscales, Reader

    from napari_neuroedge.inference.postprocess import instances_from_probability, stack_instance_ids

    tif, ckpt = inputs
    prob = tmp_path / "p.ome.zarr"
    args = ["predict", str(tif), "-o", str(prob / "labels" / "membranes"), "--prob", str(prob), "--instances",
            str(prob / "labels" / "cells"), "--model", str(ckpt), "--tile", "64", "--quiet"]
    assert main(args) == 0
    p = np.asarray(_read(prob)[1][0])
    t = float(np.median(p))  # the random model's probabilities sit in a narrow band: seed from half of them
    assert main(["predict", str(tif), "-o", str(tmp_path / "m.tif"), "--instances", str(prob / "labels" / "inst"),
                 "--seed-threshold", f"{t!r}", "--model", str(ckpt), "--tile", "64", "--quiet"]) == 0  # P exists
    nodes = list(Reader(parse_url(str(prob)))())
    image = nodes[0]
    assert image.load(Multiscales) and not image.load(Label)
    assert [n.load(Labels) for n in nodes if n.load(Labels)][0].lookup("labels", []) == ["cells", "membranes", "inst"]
    labels = {n.zarr.path.rstrip("/").rsplit("/", 1)[-1]: n for n in nodes if n.load(Label)}
    assert set(labels) == {"cells", "membranes", "inst"}
    for node in labels.values():
        attrs = node.zarr.root_attrs
        assert attrs.get("ome", attrs)["image-label"]["source"] == {"image": "../../"}
        assert [np.asarray(d).shape for d in node.data] == [(2, 256, 256), (2, 128, 128), (2, 64, 64)]
        assert node.metadata["coordinateTransformations"][0][0]["scale"] == [50.0, 4.0, 4.0]
    m, i = np.asarray(labels["membranes"].data[0]), np.asarray(labels["inst"].data[0])
    np.testing.assert_array_equal(m, (p >= 0.5).astype(np.uint8))
    assert i.dtype == np.uint32 and len(np.unique(i)) > 3
    for z in range(2):
        np.testing.assert_array_equal(i[z], stack_instance_ids(instances_from_probability(p[z], t), z, p.shape))
    assert not [q for q in tmp_path.iterdir() if q.name.endswith(".part")]  # no temporary folder left behind
    # a label inside an image that is neither there nor written: refused before any work; existing: never replaced
    assert main(["predict", str(tif), "-o", str(tmp_path / "m2.tif"), "--instances",
                 str(tmp_path / "none.ome.zarr" / "labels" / "x"), "--model", str(ckpt), "--quiet"]) == 2
    assert not (tmp_path / "m2.tif").exists()
    assert main(["predict", str(tif), "-o", str(tmp_path / "m3.tif"), "--instances", str(prob / "labels" / "inst"),
                 "--model", str(ckpt), "--quiet"]) == 2
