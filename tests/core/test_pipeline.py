"""The one prediction pipeline: request + output plan, thresholds applied once, instances, cancel, the
out-of-memory fallback, and the widget's OME-Zarr working arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_neuroedge.config import NormConfig, TileConfig, TTAConfig
from napari_neuroedge.inference.oom import OOMFallback, is_oom
from napari_neuroedge.inference.pipeline import (OutputPlan, PredictionRequest, iter_run, output_shape,
                                                 predict_probability, run)
from napari_neuroedge.inference.postprocess import instances_from_probability
from napari_neuroedge.inference.predict import predict_array
from napari_neuroedge.progress import CallbackProgress, Cancelled, drive

TILE = TileConfig(tile=32, context=4, batch=3)


class Smooth:
    """A numpy predictor: probability = a smooth function of the normalised input (tile-independent)."""

    multiple, context, out_channels = 1, 4, 1

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-(4 * batch - 2)))


def _volume(shape=(3, 50, 70), seed=0) -> np.ndarray:
    yy, xx = np.mgrid[:shape[-2], :shape[-1]]
    rng = np.random.default_rng(seed)
    vol = [(128 + 100 * np.sin(xx / (5 + z)) * np.cos(yy / 7) + rng.normal(0, 5, yy.shape)) for z in range(shape[0])]
    return np.clip(np.stack(vol), 0, 255).astype(np.uint8)


def _zeros(shape, dtype=np.float32) -> np.ndarray:
    return np.zeros(shape, dtype)


def test_membranes_and_instances_come_from_the_same_probability():
    vol = _volume()
    req = PredictionRequest(predictor=Smooth(), tile=TILE, threshold=0.4, seed_threshold=0.25, slices=[2, 0])
    shape = output_shape(vol.shape, req.slices)
    assert shape == (2, 50, 70)
    plan = OutputPlan(_zeros(shape), _zeros(shape, np.uint8), instances=_zeros(shape, np.uint32))
    events = []
    outcome = run(vol, req, plan, CallbackProgress(events.append))
    # the probability is the kernel's, in the requested slice order
    ref = predict_array(vol, Smooth(), tile=TILE, norm=NormConfig(), slices=[2, 0])
    np.testing.assert_array_equal(plan.probability, ref)
    np.testing.assert_array_equal(ref[0], predict_array(vol[2], Smooth(), tile=TILE, norm=NormConfig()))
    np.testing.assert_array_equal(plan.membranes, (ref >= 0.4).astype(np.uint8))
    assert 0.1 < plan.membranes.mean() < 0.9
    plane = 50 * 70
    for k, z in enumerate([2, 0]):  # ids unique across the stack: slice z's cells are z * H * W + 1..n
        cells = instances_from_probability(ref[k], 0.25)
        assert cells.max() > 3
        np.testing.assert_array_equal(plan.instances[k], cells + z * plane)
    assert outcome.threshold == 0.4 and outcome.seed_threshold == 0.25 and outcome.slices == [2, 0]
    tiles = [e for e in events if e.unit == "tiles"]
    assert tiles[-1].done == tiles[-1].total == 2 * 6  # 2 x 3 tiles of 32 px per slice, a batch per tile row
    assert [e.done for e in events if e.unit == "slices"] == [1, 2]


def test_instances_without_a_probability_sink_and_variance_alone():
    vol = _volume((2, 40, 40))
    inst = _zeros((2, 40, 40), np.uint32)
    run(vol, PredictionRequest(predictor=Smooth(), tile=TILE, seed_threshold=0.3), OutputPlan(instances=inst))
    ref = predict_array(vol, Smooth(), tile=TILE, norm=NormConfig())
    np.testing.assert_array_equal(inst[1], instances_from_probability(ref[1], 0.3) + 1600)

    class WithVariance(Smooth):
        out_channels = 2

        def __call__(self, batch):
            p = super().__call__(batch)
            return np.concatenate([p, p * 0 + 0.125], 1)

    var = _zeros((40, 40))
    run(vol[0], PredictionRequest(predictor=WithVariance(), tile=TILE), OutputPlan(variance=var))
    assert np.all(var == 0.125)
    with pytest.raises(ValueError, match="TTA"):
        run(vol[0], PredictionRequest(predictor=Smooth(), tile=TILE), OutputPlan(variance=_zeros((40, 40))))


def test_bad_plans_are_refused_before_any_work():
    vol = _volume((2, 40, 40))
    req = PredictionRequest(predictor=Smooth(), tile=TILE)
    with pytest.raises(ValueError, match="nothing to predict"):
        run(vol, req, OutputPlan())
    with pytest.raises(ValueError, match=r"needs \(2, 40, 40\)"):
        run(vol, req, OutputPlan(probability=_zeros((1, 40, 40))))
    with pytest.raises(ValueError, match="do not lie"):
        run(vol, PredictionRequest(predictor=Smooth(), slices=[5]), OutputPlan(probability=_zeros((1, 40, 40))))


def test_the_models_thresholds_are_the_default(tmp_path):
    from napari_neuroedge.models.checkpoint import make_checkpoint
    from napari_neuroedge.models.registry import build_model

    torch.manual_seed(0)
    ckpt = make_checkpoint(build_model("unet", base=4, depth=2), "unet", {"base": 4, "depth": 2}, NormConfig())
    ckpt.threshold, ckpt.seed_threshold = 0.55, 0.2
    vol = _volume((1, 48, 48))
    mem = _zeros((1, 48, 48), np.uint8)
    prob = _zeros((1, 48, 48))
    events = []
    out = drive(iter_run(vol, PredictionRequest(model=ckpt, tile=TileConfig(tile=48), device="cpu"),
                         OutputPlan(prob, mem)), CallbackProgress(events.append))
    assert out.threshold == 0.55 and out.seed_threshold == 0.2 and out.device.startswith("cpu")
    np.testing.assert_array_equal(mem, (prob >= 0.55).astype(np.uint8))
    assert [e.stage for e in events][:2] == ["building U-Net on cpu", f"running on {out.device}"]
    # the in-memory convenience runs the same request
    np.testing.assert_array_equal(predict_probability(vol, PredictionRequest(model=ckpt, tile=TileConfig(tile=48),
                                                                             device="cpu")), prob)


def test_a_predictor_cache_reuses_the_prepared_model_and_gives_the_same_result():
    from napari_neuroedge.inference.predictor_cache import PredictorCache
    from napari_neuroedge.models.checkpoint import make_checkpoint
    from napari_neuroedge.models.registry import build_model

    torch.manual_seed(0)
    ckpt = make_checkpoint(build_model("unet", base=4, depth=2), "unet", {"base": 4, "depth": 2}, NormConfig())
    built = []
    original = ckpt.build
    ckpt.build = lambda: built.append(1) or original()  # count the model builds
    vol = _volume((1, 48, 48))
    cache = PredictorCache(size=2)
    request = PredictionRequest(model=ckpt, tile=TileConfig(tile=48), device="cpu", cache=cache)
    first, again = predict_probability(vol, request), predict_probability(vol, request)
    assert len(built) == 1 and len(cache) == 1
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, predict_probability(vol, PredictionRequest(
        model=ckpt, tile=TileConfig(tile=48), device="cpu")))  # uncached: the same numbers
    assert len(built) == 2
    # other settings, or a new checkpoint object (a fine-tune's new weights), get their own predictor
    predict_probability(vol, PredictionRequest(model=ckpt, tile=TileConfig(tile=48), tta=TTAConfig(n=6),
                                               device="cpu", cache=cache))
    assert len(built) == 3 and len(cache) == 2
    other = make_checkpoint(build_model("unet", base=4, depth=2), "unet", {"base": 4, "depth": 2}, NormConfig())
    assert not np.array_equal(predict_probability(vol, PredictionRequest(
        model=other, tile=TileConfig(tile=48), device="cpu", cache=cache)), first)
    assert len(cache) == 2  # bounded: the least recently used entry went
    predict_probability(vol, request)
    assert len(built) == 4  # ... and it was the first one


def test_cancel_stops_between_tile_batches():
    vol = _volume((3, 64, 64))
    calls = []

    class Counting(Smooth):
        def __call__(self, batch):
            calls.append(len(batch))
            return super().__call__(batch)

    stop = {"now": False}

    def update(event):
        stop["now"] = event.unit == "tiles" and event.done >= 3

    with pytest.raises(Cancelled):
        run(vol, PredictionRequest(predictor=Counting(), tile=TileConfig(tile=32, context=4, batch=1)),
            OutputPlan(probability=_zeros((3, 64, 64))), CallbackProgress(update, lambda: stop["now"]))
    assert len(calls) == 3  # 3 x 3 x 3 tiles planned; stopped right after the third batch


# ---------------------------------------------------------------------------------------------- out of memory

class FakeGPU(Smooth):
    """Raises torch's out-of-memory error for batches above ``fits`` tiles (0: always, as a full GPU would)."""

    def __init__(self, fits: int, device: str = "cuda") -> None:
        self.fits, self.device, self.calls = fits, torch.device(device), []

    def __call__(self, batch):
        self.calls.append(len(batch))
        if len(batch) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().__call__(batch)

    def on_cpu(self):
        return FakeGPU(10**6, "cpu")


def test_out_of_memory_retries_with_smaller_batches():
    vol = _volume((1, 64, 160))
    fake = FakeGPU(fits=2)
    events, prob = [], _zeros((1, 64, 160))
    out = run(vol, PredictionRequest(predictor=fake, tile=TileConfig(tile=32, context=4, batch=5)),
              OutputPlan(probability=prob), CallbackProgress(events.append))
    np.testing.assert_array_equal(prob, predict_array(vol, Smooth(), tile=TileConfig(tile=32, context=4, batch=5),
                                                      norm=NormConfig()))
    assert fake.calls[:3] == [5, 2, 2] and max(fake.calls[3:]) <= 2  # halved once, then kept small
    assert out.notes == ["out of memory on cuda with 5 tiles per pass; retrying with 2"]
    assert [e.info["warning"] for e in events if "warning" in e.info] == out.notes


def test_out_of_memory_with_one_tile_moves_to_the_cpu():
    vol = _volume((2, 40, 40))
    fake = FakeGPU(fits=0)
    prob = _zeros((2, 40, 40))
    out = run(vol, PredictionRequest(predictor=fake, tile=TileConfig(tile=32, context=4, batch=2)),
              OutputPlan(probability=prob))
    np.testing.assert_array_equal(prob, predict_array(vol, Smooth(), tile=TileConfig(tile=32, context=4, batch=2),
                                                      norm=NormConfig()))
    assert fake.calls == [2, 1]
    assert out.notes[-1] == "out of memory on cuda even with one tile; continuing on the CPU (slower)"
    # on the CPU there is nowhere left to go: the error reaches the caller
    with pytest.raises(torch.OutOfMemoryError):
        OOMFallback(FakeGPU(0, "cpu"))(np.zeros((1, 1, 8, 8), np.float32))
    assert is_oom(RuntimeError("MPS backend out of memory")) and not is_oom(RuntimeError("shape mismatch"))


def test_torch_predictor_shrinks_its_tta_batch_then_moves_to_the_cpu():
    from napari_neuroedge.inference.predict import TorchPredictor

    pred = TorchPredictor(torch.nn.Conv2d(1, 1, 1), "cpu", tta=TTAConfig(n=6), max_batch=6)
    pred(np.zeros((1, 1, 16, 16), np.float32))
    assert pred.shrink() and pred.batch_limit(16 * 16) == 3
    assert pred.shrink() and pred.batch_limit(16 * 16) == 1 and not pred.shrink()
    moved = pred.on_cpu()
    assert moved.device.type == "cpu" and moved.tta.n == 6 and moved.model is pred.model


# ---------------------------------------------------------------------------------------- OME-Zarr work store

def test_work_store_arrays_are_ome_zarr_with_axes_and_scale(tmp_path):
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    from napari_neuroedge.io.stacks import open_stack
    from napari_neuroedge.inference.staged import iter_staged
    from napari_neuroedge.io.workstore import OutputStore

    store = OutputStore(tmp_path)
    vol = _volume((3, 40, 48))
    req = PredictionRequest(predictor=Smooth(), tile=TILE, threshold=0.5, slices=[0, 1, 2])
    staged, _ = drive(iter_staged(vol, req, store, instances=True, voxel_size=(40.0, 4.0, 4.0)))
    folders = sorted(p.name for p in store.root.iterdir())
    assert folders == ["0001-boundary.ome.zarr", "0002-membranes.ome.zarr", "0003-instances.ome.zarr"]
    node = list(Reader(parse_url(str(store.path_of(staged.probability))))())[0]
    assert [a["name"] for a in node.metadata["axes"]] == ["z", "y", "x"]
    assert [a.get("unit") for a in node.metadata["axes"]] == ["nanometer"] * 3
    assert node.metadata["coordinateTransformations"][0][0]["scale"] == [40.0, 4.0, 4.0]
    back = open_stack(store.path_of(staged.membranes))
    assert back.voxel_size == (40.0, 4.0, 4.0)
    ref = predict_array(vol, Smooth(), tile=TILE, norm=NormConfig())
    np.testing.assert_array_equal(np.asarray(back.data), (ref >= 0.5).astype(np.uint8))
    import zarr

    assert "image-label" in zarr.open_group(str(store.path_of(staged.instances)), mode="r").attrs["ome"]
    assert "image-label" not in zarr.open_group(str(store.path_of(staged.probability)), mode="r").attrs["ome"]
    # a cancelled staged run leaves nothing behind
    job = iter_staged(vol, req, store)
    next(job)
    job.close()
    assert sorted(p.name for p in store.root.iterdir()) == folders
    store.close()
