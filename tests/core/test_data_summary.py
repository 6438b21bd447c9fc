"""describe_slice / describe_data: what a fine-tune or an export trains on, with the flags that need a look."""

from __future__ import annotations

import numpy as np

from napari_neuroedge.training.dataset import LabelledSlice
from napari_neuroedge.training.finetune import describe_data, describe_slice, slice_warnings


def test_describe_slice_fractions():
    label = np.zeros((10, 20), np.uint8)
    label[:, :5] = 1  # 50 membrane pixels of 200
    mask = np.ones_like(label)
    mask[:, 15:] = 0  # 50 ignored: 150 labelled, 50 of them membrane
    corrected = np.zeros_like(label)
    corrected[0, :3] = 1
    corrected[0, 18:] = 1  # 2 changed pixels are ignored: 3 of 150 count
    row = describe_slice(label, mask, corrected)
    assert row == {"pixels": 150, "labelled_fraction": 0.75, "membrane_fraction": round(50 / 150, 4),
                   "changed_fraction": 0.02}
    assert describe_slice(label)["changed_fraction"] is None and describe_slice(label)["membrane_fraction"] == 0.25
    assert slice_warnings("slice 3", row) == []


def test_flags_almost_empty_and_almost_unlabelled_slices():
    label = np.zeros((100, 100), np.uint8)
    label[0, :50] = 1  # 0.5% membrane
    mask = np.zeros_like(label)
    mask[:2] = 1  # 2% labelled
    warnings = slice_warnings("slice 7", describe_slice(label, mask))
    assert warnings == ["slice 7: only 2.0% of it is labelled (the rest is ignored)"]
    warnings = slice_warnings("slice 7", describe_slice(label))
    assert warnings == ["slice 7: almost no membrane labelled (0.5%); is it really corrected?"]
    info = describe_data([LabelledSlice(np.zeros((100, 100), np.float32), label, meta={"slice": 7, "source": "s"})])
    assert info["slices"][0]["slice"] == 7 and info["slices"][0]["pixels"] == 10_000
    assert info["warnings"] == warnings
