"""The correction rules, headless: plain fake layers (``.name``, ``.data``, ``.metadata``) and a fake viewer (a
dict of layers), no napari, no Qt.

What counts as corrected (a stroke after a prediction, or a mark), never-predicted ("scratch") slices, the reference
prediction kept at the first edit or mark, what Export and Fine-tune take, and what a re-prediction keeps.
The helpers ``_predict``, ``_stroke`` and ``_state`` do what Predict, a brush stroke and a reader of the bookkeeping do.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_neuroedge._napari import tracking, training_data
from napari_neuroedge._napari.ledger import ledger_of


class FakeLayer:
    def __init__(self, name: str, data: np.ndarray, role: str = "", image: str | None = None) -> None:
        self.name, self.data, self.ndim = name, data, data.ndim
        self.metadata = {tracking.KEY: {"role": role, "image": image}} if role else {}


class FakeViewer:
    def __init__(self, *layers: FakeLayer) -> None:
        self.layers = {layer.name: layer for layer in layers}


SHAPE = (4, 16, 16)


@pytest.fixture
def world():
    """An image 'em' (4 slices of 16 x 16), its empty boundary and membrane layers."""
    image = FakeLayer("em", np.zeros(SHAPE, np.uint8))
    boundary = FakeLayer("em boundary", np.zeros(SHAPE, np.float32), "boundary", "em")
    mem = FakeLayer("em membranes", np.zeros(SHAPE, np.uint8), "membranes", "em")
    return FakeViewer(image, boundary, mem), boundary, mem


def _prob(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(SHAPE[1:]).astype(np.float32)


def _predict(viewer, mem, slices, threshold=0.5, model="m1", seed=0, keep_edits=True):
    """What Predict's landing (``landing.apply_steps``) does: write boundary and membranes (except the slices it
    keeps), book-keep."""
    boundary = viewer.layers["em boundary"]
    led = ledger_of(mem)
    keep = led.kept_on_repredict(slices) if keep_edits else set()
    if not keep_edits:
        tracking.forget_slices(mem, slices)
    for z in slices:
        boundary.data[z] = _prob(seed + z)
        if z not in keep:
            mem.data[z] = boundary.data[z] >= threshold
    led.mark_predicted(slices, {"model": model, "model_version": "v"}, threshold, keep=keep)
    return keep


def _stroke(viewer, mem, z, value=1, at=(3, 4)):
    """A brush stroke on slice ``z``; returns the slices it left as never predicted (the warning's)."""
    mem.data[z][at] = value
    return tracking.record_paint(viewer, mem, {z})


def _state(mem) -> dict[str, set[int]]:
    led = ledger_of(mem)
    return {"edited": set(led.edited), "corrected": set(led.corrected), "scratch": set(led.scratch),
            "predicted": set(led.predicted), "exported": set(led.exported)}


def test_stroke_after_prediction_is_corrected_and_keeps_the_reference(world):
    viewer, boundary, mem = world
    _predict(viewer, mem, [0, 1, 2])
    first = (boundary.data[1] >= 0.5).astype(np.uint8)
    assert _stroke(viewer, mem, 1) == set()
    assert _state(mem) == {"edited": {1}, "corrected": {1}, "scratch": set(), "predicted": {0, 1, 2},
                           "exported": set()}
    np.testing.assert_array_equal(tracking.reference_prediction(viewer, mem, 1), first)
    # another model (other weights, other threshold) predicts again: the corrected slice keeps its labels, its
    # provenance and the reference it was corrected against; the others follow the new prediction
    kept = _predict(viewer, mem, [0, 1, 2], threshold=0.3, model="m2", seed=10)
    assert kept == {1}
    assert not np.array_equal(boundary.data[1] >= 0.3, first)
    np.testing.assert_array_equal(tracking.reference_prediction(viewer, mem, 1), first)
    np.testing.assert_array_equal(tracking.reference_prediction(viewer, mem, 0),
                                  (boundary.data[0] >= 0.3).astype(np.uint8))
    led = ledger_of(mem)
    assert led.model_of(1)["model"] == "m1" and led.threshold_of(1) == 0.5
    assert led.model_of(0)["model"] == "m2" and led.threshold_of(0) == 0.3
    # a second stroke on the slice does not move the reference either
    _stroke(viewer, mem, 1, at=(5, 5))
    np.testing.assert_array_equal(tracking.reference_prediction(viewer, mem, 1), first)


def test_stroke_on_a_never_predicted_slice_is_scratch_not_training_data(world):
    viewer, _, mem = world
    _predict(viewer, mem, [0])
    assert _stroke(viewer, mem, 2) == {2}
    assert _state(mem) == {"edited": {2}, "corrected": set(), "scratch": {2}, "predicted": {0}, "exported": set()}
    assert tracking.reference_prediction(viewer, mem, 2) is None
    led = ledger_of(mem)
    assert led.never_predicted(2) and led.never_predicted(3) and not led.never_predicted(0)
    assert not led.is_corrected(2) and led.left_out() == [2]
    summary = training_data.viewer_summary(viewer, mem)
    assert summary.slices == [] and summary.text.startswith("nothing: no slice is marked corrected.")
    assert "Not included: slice 2, painted but never predicted" in summary.notes[0]
    # a second stroke is not a first edit: no second warning
    assert _stroke(viewer, mem, 2, at=(6, 6)) == set()


def test_marking_a_scratch_slice_makes_all_its_labels_ground_truth(world):
    viewer, _, mem = world
    _predict(viewer, mem, [0])
    _stroke(viewer, mem, 2)
    assert tracking.take_as_corrected(viewer, mem, [2], scratch_too=True) == {2}
    assert _state(mem)["corrected"] == {2} and _state(mem)["scratch"] == {2}
    arrays = training_data.slice_arrays(viewer, mem, 2)
    assert arrays.prediction is None and arrays.corrected is None  # no prediction to pretend
    np.testing.assert_array_equal(arrays.label, (mem.data[2] > 0).astype(np.uint8))
    summary = training_data.viewer_summary(viewer, mem)
    assert summary.slices == [2] and summary.notes == []
    assert "labels drawn from scratch (never predicted)" in summary.text
    # predicting it later does not turn the user's labels into a corrected prediction
    _predict(viewer, mem, [2])
    assert tracking.reference_prediction(viewer, mem, 2) is None


def test_marking_a_predicted_slice_keeps_its_prediction_as_the_reference(world):
    viewer, boundary, mem = world
    _predict(viewer, mem, [0, 1])
    shown = (boundary.data[0] >= 0.5).astype(np.uint8)
    assert tracking.take_as_corrected(viewer, mem, [0], scratch_too=True) == set()
    assert _state(mem)["corrected"] == {0} and _state(mem)["edited"] == set() and _state(mem)["scratch"] == set()
    _predict(viewer, mem, [0, 1], threshold=0.2, seed=5)  # marked slices are kept like edited ones
    np.testing.assert_array_equal(mem.data[0], shown)
    np.testing.assert_array_equal(tracking.reference_prediction(viewer, mem, 0), shown)
    arrays = training_data.slice_arrays(viewer, mem, 0)
    assert arrays.corrected.sum() == 0  # the user changed nothing of it


def test_unmarking_leaves_the_slice_edited(world):
    viewer, _, mem = world
    _predict(viewer, mem, [0, 1, 2])
    _stroke(viewer, mem, 1)
    ledger_of(mem).mark_corrected(1, False)
    assert _state(mem)["corrected"] == set() and _state(mem)["edited"] == {1}
    assert training_data.viewer_summary(viewer, mem).slices == []
    # an unmarked edited slice is still the user's: a re-prediction keeps its labels
    assert _predict(viewer, mem, [0, 1, 2], seed=3) == {1}


def test_replacing_the_corrections_forgets_them(world):
    viewer, boundary, mem = world
    _predict(viewer, mem, [0, 1])
    _stroke(viewer, mem, 1)
    _predict(viewer, mem, [1], keep_edits=False)
    assert _state(mem) == {"edited": set(), "corrected": set(), "scratch": set(), "predicted": {0, 1},
                           "exported": set()}
    np.testing.assert_array_equal(mem.data[1], boundary.data[1] >= 0.5)
    # no reference is kept: the reference is the prediction shown now, until the next edit
    np.testing.assert_array_equal(tracking.reference_prediction(viewer, mem, 1),
                                  (boundary.data[1] >= 0.5).astype(np.uint8))


def test_what_export_and_finetune_take(world):
    """The corrected slices, in order, each with its label, ignore mask and the prediction it corrected."""
    viewer, boundary, mem = world
    ignore = FakeLayer("em ignore", np.zeros(SHAPE, np.uint8), "ignore", "em")
    viewer.layers[ignore.name] = ignore
    _predict(viewer, mem, [0, 1, 2, 3])
    _stroke(viewer, mem, 3)
    _stroke(viewer, mem, 1)
    tracking.take_as_corrected(viewer, mem, [2], scratch_too=True)
    ignore.data[1, :4] = 1
    summary = training_data.viewer_summary(viewer, mem)
    assert summary.slices == [1, 2, 3] == ledger_of(mem).training_slices()
    assert [r["slice"] for r in summary.rows] == [1, 2, 3]
    a = training_data.slice_arrays(viewer, mem, 1)
    assert a.mask is not None and int(a.mask.sum()) == 16 * 12
    assert a.corrected is not None and int(a.corrected.sum()) <= 1
    assert training_data.slice_arrays(viewer, mem, 2).mask is None


def test_exported_slices_and_their_digests(world):
    viewer, _, mem = world
    _predict(viewer, mem, [0, 1])
    _stroke(viewer, mem, 0)
    led = ledger_of(mem)
    assert led.needs_export(0, "/sets/a", "d1")
    led.mark_exported(0, "/sets/a", "d1")
    assert _state(mem)["exported"] == {0}
    assert not led.needs_export(0, "/sets/a", "d1")  # unchanged since its export to this folder
    assert led.needs_export(0, "/sets/a", "d2") and led.needs_export(0, "/sets/b", "d1")
    assert _state(mem)["corrected"] == {0}  # exporting does not change what is training data


def test_2d_image_is_slice_zero():
    image = FakeLayer("em", np.zeros(SHAPE[1:], np.uint8))
    boundary = FakeLayer("em boundary", _prob(0), "boundary", "em")
    mem = FakeLayer("em membranes", (boundary.data >= 0.5).astype(np.uint8), "membranes", "em")
    viewer = FakeViewer(image, boundary, mem)
    ledger_of(mem).mark_predicted([0], {"model": "m1"}, 0.5)
    mem.data[3, 4] = 1 - mem.data[3, 4]
    assert tracking.record_paint(viewer, mem, tracking.slices_from_paint(None, 2)) == set()
    assert _state(mem)["corrected"] == {0}
    np.testing.assert_array_equal(tracking.reference_prediction(viewer, mem, 0),
                                  (boundary.data >= 0.5).astype(np.uint8))


def test_the_ledger_changes_only_through_its_methods_and_says_what_changed():
    import copy
    import dataclasses

    from napari_neuroedge._napari.ledger import Ledger

    led = Ledger()
    seen: list[frozenset[int]] = []
    led.changed.connect(seen.append)
    led.mark_predicted([0, 1, 2], {"model": "m1"}, 0.4, uncertainty=True)
    led.record_stroke({1}, current=lambda z: np.ones((2, 2), np.uint8))
    led.record_stroke({1})  # a second stroke: already edited and corrected, nothing changes
    led.mark_corrected(1, False)
    assert seen == [frozenset({0, 1, 2}), frozenset({1}), frozenset({1})]  # one event per change, none without
    assert led.uncertain == {0, 1, 2} and led.threshold == 0.4
    record = led.record(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.corrected = True  # type: ignore[misc]
    for name in ("corrected", "threshold"):
        with pytest.raises(AttributeError):
            setattr(led, name, frozenset({2}))
    np.testing.assert_array_equal(led.reference_of(1), np.ones((2, 2), np.uint8))
    # napari copies a layer's metadata (e.g. Duplicate Layer): the copy is a ledger of its own, no events shared
    twin = copy.deepcopy({"neuroedge": {"ledger": led}})["neuroedge"]["ledger"]
    assert twin is not led and twin.records() == led.records() and twin.threshold == 0.4
    twin.mark_corrected(0)
    assert led.corrected == set() and twin.corrected == {0} and len(seen) == 3


def test_ledger_of_follows_the_layer():
    mem = FakeLayer("em membranes", np.zeros(SHAPE, np.uint8), "membranes", "em")
    other = FakeLayer("em membranes (old)", np.zeros(SHAPE, np.uint8), "membranes", "em")
    ledger_of(mem).mark_predicted([0], {"model": "m1"}, 0.5)
    assert ledger_of(mem) is ledger_of(mem) and ledger_of(other).predicted == set()
    assert mem.metadata[tracking.KEY]["role"] == "membranes"  # the plugin's other keys stay
    user_made = FakeLayer("em membranes", np.zeros(SHAPE, np.uint8))  # a Labels layer without our metadata
    assert ledger_of(user_made).records() == {} and tracking.info_role(user_made) == ""


def test_rows_of_large_slices_are_counted_elsewhere_and_a_stroke_meanwhile_voids_them(world, monkeypatch):
    """Export's and Fine-tune's summaries leave the rows of large slices to ``later`` (the widgets: a thread): the
    summary says they are being counted; a row computed before a stroke that dropped it is not stored."""
    viewer, _, mem = world
    _predict(viewer, mem, [0, 1])
    _stroke(viewer, mem, 1)
    asked: list[list[int]] = []
    assert training_data.viewer_summary(viewer, mem, later=asked.append).pending == []  # small slices: at once
    assert asked == []
    monkeypatch.setattr(training_data, "ROW_LATER_PIXELS", 100)  # 16 x 16 is now large
    tracking.drop_rows(mem)
    summary = training_data.viewer_summary(viewer, mem, later=asked.append)
    assert summary.slices == [1] and summary.pending == [1] and summary.rows == [] and asked == [[1]]
    assert "Counting the labelled pixels of slice 1" in summary.text
    version = tracking.rows_version(mem)
    keyed = training_data.compute_row(viewer, mem, 1)  # what the thread does
    _stroke(viewer, mem, 1, at=(7, 7))
    tracking.drop_rows(mem, {1})  # (the paint tracking drops the painted slice's row)
    assert not training_data.store_row(mem, 1, keyed, version)  # it predates the stroke
    keyed = training_data.compute_row(viewer, mem, 1)
    assert training_data.store_row(mem, 1, keyed, tracking.rows_version(mem))
    summary = training_data.viewer_summary(viewer, mem, later=asked.append)
    assert summary.pending == [] and asked == [[1]] and summary.rows[0]["slice"] == 1
    assert summary.rows == training_data.viewer_summary(viewer, mem).rows  # the same row as computed at once
    assert summary.rows[0]["changed_fraction"] == pytest.approx(2 / 256, abs=1e-4)
