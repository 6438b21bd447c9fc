"""Export round-trips into the trainer's reader; synthetic data has the promised properties."""

from __future__ import annotations

import numpy as np
import pytest

from napari_neuroedge.config import NormConfig
from napari_neuroedge.io.export import ExportItem, export_slices
from napari_neuroedge.inference.normalize import normalize_slice
from napari_neuroedge.io.sample import synthetic_em
from napari_neuroedge.training.dataset import load_training_folder, read_manifest


def test_export_round_trip_and_never_overwrite(tmp_path, synth):
    norm = NormConfig()
    img, lab = synth.image, synth.membrane
    mask = np.ones_like(lab)
    mask[:10] = 0
    pred = lab.copy()
    pred[0, 30:40, 30:40] ^= 1
    items = [ExportItem(img[z], lab[z], mask[z], pred[z], {"source": "s.tif", "slice": z, "model": "default"})
             for z in range(2)]
    export_slices(tmp_path, items)
    first = sorted(p.name for p in (tmp_path / "images").iterdir())
    before = (tmp_path / "images" / first[0]).read_bytes()
    export_slices(tmp_path, items[:1])  # same slice again: a new name, the old file untouched
    assert len(list((tmp_path / "images").iterdir())) == 3
    assert (tmp_path / "images" / first[0]).read_bytes() == before
    loaded = load_training_folder(tmp_path, norm)
    assert len(loaded) == 3
    np.testing.assert_allclose(loaded[0].image, normalize_slice(img[0], norm))
    np.testing.assert_array_equal(loaded[0].label, lab[0])
    np.testing.assert_array_equal(loaded[0].mask, mask[0])
    assert loaded[0].corrected.sum() == 100 and loaded[1].corrected.sum() == 0
    entry = read_manifest(tmp_path)["items"][0]
    assert entry["source"] == "s.tif" and entry["slice"] == 0 and entry["model"] == "default"


def test_export_refuses_mismatched_shapes_and_writes_nothing(tmp_path):
    bad = ExportItem(np.zeros((10, 10), np.uint8), np.zeros((10, 11), np.uint8), meta={"slice": 0})
    good = ExportItem(np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.uint8), meta={"slice": 1})
    with pytest.raises(ValueError, match="shapes differ"):
        export_slices(tmp_path / "set", [good, bad])
    assert not (tmp_path / "set").exists()


def test_synthetic_em_has_dark_membranes_of_a_few_pixels():
    s = synthetic_em((2, 128, 128), cell_size=30, seed=5)
    assert s.image.dtype == np.uint8 and s.membrane.dtype == np.uint8 and s.image.shape == (2, 128, 128)
    frac = s.membrane.mean()
    assert 0.08 < frac < 0.45
    assert s.image[s.membrane == 1].mean() < s.image[s.membrane == 0].mean() - 50
    from scipy import ndimage as ndi
    from skimage.morphology import skeletonize

    # membranes are 2-4 px wide: the distance to the nearest non-membrane pixel, along the membranes' centre lines
    dist = ndi.distance_transform_edt(np.pad(s.membrane[0], 1))[1:-1, 1:-1]
    centre = dist[skeletonize(s.membrane[0] > 0)]
    assert 1.0 <= np.percentile(centre, 10) and np.percentile(centre, 90) <= 2.5
    assert not np.array_equal(s.image[0], s.image[1])  # slices differ (drift)
    assert synthetic_em((40, 50)).image.shape == (40, 50)
