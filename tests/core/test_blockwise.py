"""Blockwise (Dask) prediction: same pixels as the single-process run, resumable, one model load per worker."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("dask")
zarr = pytest.importorskip("zarr")

from napari_neuroedge.io.atomic import OutputExistsError  # noqa: E402
from napari_neuroedge.config import NormConfig, TileConfig  # noqa: E402
from napari_neuroedge.progress import CallbackProgress  # noqa: E402
from napari_neuroedge.inference import blockwise as bw  # noqa: E402
from napari_neuroedge.inference.pipeline import PredictionRequest  # noqa: E402
from napari_neuroedge.inference.predict import TorchPredictor, predict_array  # noqa: E402
from napari_neuroedge.inference.tiling import make_grid  # noqa: E402

# (2, 40, 56) stack, tiles of at most 16 px with 2 px context (4 px overlap): the fewest tiles are 15 px, rows
# start at 0, 8, 17, 25 and columns at 0, 10, 20, 31, 41 (20 tiles per slice). Blocks of 20 x 28 px see 3 tile
# rows and 3 tile columns.
TILE = TileConfig(tile=16, context=2, batch=3)
CHUNKS = (1, 20, 28)
TILES_PER_BLOCK = {(0, 0): 9, (0, 28): 9, (20, 0): 9, (20, 28): 9}  # per slice, keyed by (y0, x0)


def req(model: Any, tile: TileConfig = TILE, **kwargs: Any) -> PredictionRequest:
    """The request the blockwise functions take: ``model`` (a predictor, source, ModelSpec or checkpoint path)
    with the test's tiles."""
    return PredictionRequest(model=model, tile=tile, **kwargs)


def box_predictor(batch: np.ndarray) -> np.ndarray:
    """A fixed 3x3 mean 'conv' + sigmoid, tile by tile (its output per tile ignores the rest of the batch)."""
    x = np.pad(batch, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = batch.shape[-2:]
    s = sum(x[..., dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) / 9.0
    return (1.0 / (1.0 + np.exp(-2.0 * s))).astype(np.float32)


class CountingSource:
    """A predictor source with a stable key that counts tiles and can fail on its ``fail_at``-th call."""

    def __init__(self, fail_at: int | None = None, channels: int = 1) -> None:
        self.tiles = 0
        self.calls = 0
        self.fail_at = fail_at
        self.channels = channels
        self.lock = threading.Lock()

    def key(self) -> Any:
        return ["counting-box", self.channels]

    def describe(self) -> dict[str, Any]:
        return {"multiple": 1, "out_channels": self.channels}

    def load(self) -> Any:
        return self

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            self.calls += 1
            if self.fail_at is not None and self.calls >= self.fail_at:
                raise RuntimeError("simulated worker crash")
            self.tiles += batch.shape[0]
        p = box_predictor(batch)
        return np.concatenate([p, p * p], 1) if self.channels == 2 else p


@pytest.fixture(autouse=True)
def fresh_cache() -> Any:
    """Each test starts like a new worker process: no cached predictors."""
    bw.clear_predictor_cache()
    yield
    bw.clear_predictor_cache()


@pytest.fixture
def stack() -> np.ndarray:
    return (np.random.default_rng(3).random((2, 40, 56)) * 255).astype(np.uint8)


def test_block_tiles_on_the_global_grid() -> None:
    grid = make_grid(40, 56, 16, 2)
    assert grid.tile_shape == (13, 15) and grid.ys == (0, 9, 18, 27) and grid.xs == (0, 10, 20, 31, 41)
    counts = {(b.y0, b.x0): len(bw.block_tiles(grid, b)) for b in bw.plan_blocks((40, 56), (20, 28))}
    assert counts == TILES_PER_BLOCK
    assert bw.tiles_in_range(grid.ys, 13, 20, 40) == [9, 18, 27]


def test_default_chunks_and_blocks() -> None:
    assert bw.default_chunks((3, 5000, 900)) == (1, 1024, 900)
    assert bw.default_block((3, 5000, 900), (1, 1024, 900)) == (1, 4096, 900)
    blocks = bw.plan_blocks((3, 5000, 900), (1, 4096, 900))
    assert len(blocks) == 6 and (blocks[1].y0, blocks[1].y1) == (4096, 5000)
    with pytest.raises(ValueError, match="multiple of the output chunks"):
        bw.check_block((3, 5000, 900), (1, 1024, 900), (1, 1500, 900))


def test_threads_bit_identical_to_single_process(tmp_path: Path, stack: np.ndarray) -> None:
    ref = predict_array(stack, box_predictor, tile=TILE)
    res = bw.predict_blockwise(stack, tmp_path / "p.zarr", req(box_predictor), chunks=CHUNKS,
                               block=CHUNKS, scheduler="threads", workers=2)
    out = zarr.open(str(tmp_path / "p.zarr"), mode="r")
    assert out.shape == (2, 40, 56) and out.chunks == CHUNKS
    np.testing.assert_array_equal(out[:], ref)
    assert (res.blocks_total, res.blocks_computed, res.tiles) == (8, 8, 72)  # 40 tiles single-process
    assert not bw.work_dir(tmp_path / "p.zarr").exists()


def test_2d_slices_and_variance_channel(tmp_path: Path, stack: np.ndarray) -> None:
    src = CountingSource(channels=2)
    img = stack[1]
    res = bw.predict_blockwise(img, tmp_path / "p.zarr", req(src), chunks=(20, 28), block=(20, 56),
                               variance_output=tmp_path / "v.zarr", scheduler="sync")
    ref = predict_array(img, src, tile=TILE, channels=2)
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "p.zarr"))[:], ref[0])
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "v.zarr"))[:], ref[1])
    assert res.blocks_total == 2 and res.tiles == 3 * 5 + 3 * 5  # rows {0,8,17} and {8,17,25}, all 5 columns
    sub = bw.predict_blockwise(stack, tmp_path / "s.zarr", req(box_predictor, slices="1:"),
                               chunks=CHUNKS, block=CHUNKS)
    assert sub.blocks_total == 4
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "s.zarr"))[:], predict_array(stack, box_predictor,
                                                                                        tile=TILE, slices="1:"))


def test_crash_then_rerun_computes_only_missing_blocks(tmp_path: Path, stack: np.ndarray) -> None:
    out = tmp_path / "p.zarr"
    ref = predict_array(stack, box_predictor, tile=TILE)
    with pytest.raises(RuntimeError, match="simulated worker crash"):
        bw.predict_blockwise(stack, out, req(CountingSource(fail_at=6)), chunks=CHUNKS, block=CHUNKS,
                             workers=1)
    work = bw.work_dir(out)
    assert not out.exists() and work.is_dir()
    done = sorted(p.name for p in (work / "done").iterdir())
    assert 1 <= len(done) < 8
    # simulate a crash between writing a block and marking it: garbage in its chunks, no marker
    z, y, x = (int(part[1:]) for part in done[0].split("_"))
    partial = zarr.open(str(work / "channel0.zarr"), mode="r+")
    partial[z, y:y + 20, x:x + 28] = 7.0
    (work / "done" / done[0]).unlink()
    still_done = done[1:]
    bw.clear_predictor_cache()  # the rerun is a fresh process
    src = CountingSource()
    res = bw.predict_blockwise(stack, out, req(src), chunks=CHUNKS, block=CHUNKS, workers=2)
    expected = 72 - sum(TILES_PER_BLOCK[tuple(int(p[1:]) for p in name.split("_")[1:])] for name in still_done)
    assert src.tiles == expected == res.tiles
    assert (res.blocks_computed, res.blocks_skipped) == (8 - len(still_done), len(still_done))
    np.testing.assert_array_equal(zarr.open(str(out), mode="r")[:], ref)
    assert not work.exists()


def test_rerun_with_other_settings_is_refused(tmp_path: Path, stack: np.ndarray) -> None:
    out = tmp_path / "p.zarr"
    with pytest.raises(RuntimeError):
        bw.predict_blockwise(stack, out, req(CountingSource(fail_at=1)), chunks=CHUNKS, block=CHUNKS)
    bw.clear_predictor_cache()
    with pytest.raises(ValueError, match="other settings"):
        bw.predict_blockwise(stack, out, req(CountingSource(), tile=TileConfig(16, 0.5, 3)), chunks=CHUNKS,
                             block=CHUNKS)
    with pytest.raises(OutputExistsError, match="partial blockwise run"):
        bw.predict_blockwise(stack, out, req(CountingSource()), chunks=CHUNKS, block=CHUNKS, resume=False)
    shutil.rmtree(bw.work_dir(out))
    out.mkdir()
    with pytest.raises(OutputExistsError):
        bw.predict_blockwise(stack, out, req(CountingSource()), chunks=CHUNKS, block=CHUNKS)


def test_predict_dask_is_lazy_and_exact(stack: np.ndarray) -> None:
    src = CountingSource()
    lazy = bw.predict_dask(stack, req(src), chunks=CHUNKS)
    assert lazy.shape == (2, 40, 56) and lazy.dtype == np.float32 and src.tiles == 0
    ref = predict_array(stack, box_predictor, tile=TILE)
    np.testing.assert_array_equal(lazy[1, 20:40, 28:56].compute(), ref[1, 20:40, 28:56])
    assert src.tiles == 9  # only the one block: 3 tile rows x 3 tile columns
    whole = bw.predict_dask(stack[0], req(box_predictor))  # default: the whole slice in one block
    assert whole.numblocks == (1, 1)
    np.testing.assert_array_equal(whole.compute(), ref[0])


def test_lazy_array_keeps_native_chunks(tmp_path: Path, stack: np.ndarray) -> None:
    z = zarr.open(str(tmp_path / "a.zarr"), mode="w", shape=stack.shape, chunks=(1, 20, 28), dtype="uint8")
    z[:] = stack
    lazy = bw.lazy_array(z)
    assert lazy.chunksize == (1, 20, 28) and lazy.numblocks == (2, 2, 2)
    np.testing.assert_array_equal(lazy[1].compute(), stack[1])
    assert bw.lazy_array(stack).chunksize == (1, 40, 56)  # no native chunks: one slice per chunk


def test_memmap_input_is_reopened_by_reference(tmp_path: Path, stack: np.ndarray) -> None:
    mm = np.memmap(tmp_path / "v.raw", dtype=np.uint8, mode="w+", shape=stack.shape, offset=0)
    mm[:] = stack
    mm.flush()
    ro = np.memmap(tmp_path / "v.raw", dtype=np.uint8, mode="r", shape=stack.shape)
    ref = bw.volume_ref(ro)
    assert ref.array is None and ref.memmap == (str(tmp_path / "v.raw"), 0, "|u1", (2, 40, 56))
    import pickle

    np.testing.assert_array_equal(pickle.loads(pickle.dumps(ref)).open(), stack)
    assert bw.volume_ref(ro[1:]).array is not None  # a view: shipped as an array, not re-mapped wrongly


def test_unknown_scheduler_and_bundled_name(tmp_path: Path, stack: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown scheduler 'processes'"):
        bw.predict_blockwise(stack, tmp_path / "p.zarr", req(box_predictor), scheduler="processes")
    assert not bw.work_dir(tmp_path / "p.zarr").exists()
    spec = bw.ModelSpec("default").resolved()  # bundled names stay names: each worker finds its own copy
    assert spec.checkpoint == "default" and len(spec.sha256) == 64
    with pytest.raises(ValueError, match="differs from the client's"):
        bw.ModelSpec("default", sha256="0" * 64).load()


def test_worker_envs_and_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert bw.worker_envs(2, ["cuda:1", "cpu"]) == [{"CUDA_VISIBLE_DEVICES": "1", "NEUROEDGE_DEVICE": "cuda"},
                                                    {"NEUROEDGE_DEVICE": "cpu"}]
    assert bw.worker_envs(2, ["cuda", "cuda"])[1] == {"CUDA_VISIBLE_DEVICES": "1", "NEUROEDGE_DEVICE": "cuda"}
    with pytest.raises(ValueError, match="unknown device"):
        bw.worker_envs(1, ["tpu"])
    monkeypatch.setenv("NEUROEDGE_DEVICE", "cpu")
    assert bw.worker_device("auto") == "cpu" and bw.worker_device("cuda:3") == "cuda:3"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from napari_neuroedge.models.checkpoint import make_checkpoint, save_checkpoint
    from napari_neuroedge.models.unet import UNet

    torch.manual_seed(0)
    model = UNet(base=4, depth=2).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(make_checkpoint(model, "unet", {"base": 4, "depth": 2}, NormConfig()), path)
    return path


def _torch_reference(ckpt: Path, vol: np.ndarray) -> np.ndarray:
    from napari_neuroedge.models.checkpoint import load_checkpoint

    return predict_array(vol, TorchPredictor(load_checkpoint(ckpt).build(), "cpu"), tile=TILE)


def test_model_spec_loads_once_per_process(tmp_path: Path, stack: np.ndarray, tiny_checkpoint: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEUROEDGE_DEVICE", "cpu")
    before = bw.load_count()
    spec = bw.ModelSpec(str(tiny_checkpoint)).resolved()
    assert len(spec.sha256) == 64
    bw.predict_blockwise(stack, tmp_path / "p.zarr", req(spec), chunks=CHUNKS, block=CHUNKS, workers=2)
    assert bw.load_count() - before == 1  # 8 blocks on 2 threads, one model
    out = zarr.open(str(tmp_path / "p.zarr"), mode="r")[:]
    np.testing.assert_allclose(out, _torch_reference(tiny_checkpoint, stack), rtol=0, atol=1e-5)


class OOMSource(CountingSource):
    """Runs out of memory on any pass of more than one tile (as a small GPU would)."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[0] > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().__call__(batch)


def test_blockwise_falls_back_to_smaller_batches_on_out_of_memory(tmp_path: Path, stack: np.ndarray) -> None:
    src, events = OOMSource(), []
    bw.predict_blockwise(stack, tmp_path / "p.zarr", req(src), chunks=CHUNKS, block=CHUNKS, scheduler="sync",
                         progress=CallbackProgress(events.append))
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "p.zarr"), mode="r")[:],
                                  predict_array(stack, box_predictor, tile=TILE))
    assert src.tiles == 72  # every tile ran once, one at a time after the first pass failed
    warnings = [e.info["warning"] for e in events if "warning" in (e.info or {})]
    assert warnings == ["out of memory with 3 tiles per pass; retrying with 1"]  # said once, by the first block


def test_cli_blockwise_loads_the_checkpoint_once(tmp_path: Path, stack: np.ndarray, tiny_checkpoint: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    import tifffile

    from napari_neuroedge.cli import main
    from napari_neuroedge.models import checkpoint

    loads: list[str] = []
    real = checkpoint.load_checkpoint
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda p: loads.append(str(p)) or real(p))
    tifffile.imwrite(tmp_path / "in.tif", stack)
    assert main(["predict", str(tmp_path / "in.tif"), "-o", str(tmp_path / "m.tif"), "--model", str(tiny_checkpoint),
                 "--scheduler", "threads", "--workers", "2", "--prob", str(tmp_path / "p.zarr"), "--quiet"]) == 0
    assert loads == [str(tiny_checkpoint)]  # the CLI's own load; the job, its plan and its threads reuse it
    spec = bw.source_of(PredictionRequest(model=real(tiny_checkpoint)))
    assert spec.loaded is not None and pickle.loads(pickle.dumps(spec)).loaded is None  # workers load the file


@pytest.fixture(scope="module")
def client() -> Any:
    distributed = pytest.importorskip("distributed")
    with bw.local_cluster(devices=["cpu", "cpu"]) as cluster, distributed.Client(cluster) as c:
        yield c


def test_local_cluster_two_processes_matches_single_process(tmp_path: Path, stack: np.ndarray,
                                                            tiny_checkpoint: Path, client: Any) -> None:
    src = tmp_path / "in.zarr"
    arr = zarr.open(str(src), mode="w", shape=stack.shape, chunks=(1, 20, 20), dtype="uint8")
    arr[:] = stack
    events: list[Any] = []
    res = bw.predict_blockwise(src, tmp_path / "p.zarr", req(str(tiny_checkpoint)), chunks=CHUNKS,
                               block=CHUNKS, scheduler=client, progress=CallbackProgress(events.append))
    assert (res.blocks_computed, res.tiles) == (8, 96)  # the model's multiple 4: 12 px tiles, 48 per slice over the 4 blocks
    assert [e.done for e in events] == list(range(9)) and {e.total for e in events} == {8}
    out = zarr.open(str(tmp_path / "p.zarr"), mode="r")[:]
    np.testing.assert_allclose(out, _torch_reference(tiny_checkpoint, stack), rtol=0, atol=1e-5)
    info = client.run(lambda: (os.getpid(), os.environ.get("NEUROEDGE_DEVICE"), bw.load_count()))
    loads = {pid: n for pid, _, n in info.values()}
    assert len(loads) == 2 and all(dev == "cpu" for _, dev, _ in info.values())
    ran = [e.info["pid"] for e in events[1:]]
    assert set(ran) <= set(loads) and os.getpid() not in ran  # blocks ran in the worker processes
    assert all(loads[pid] == 1 for pid in set(ran))  # each worker loaded the model once, for all its blocks
    assert len(ran) == 8 > len(set(ran))


class DieOnceSource:
    """Kills the worker process that first calls it (a crash mid-block); every later call predicts normally."""

    def __init__(self, flag: str) -> None:
        self.flag = flag

    def key(self) -> Any:
        return ["die-once-box"]

    def describe(self) -> dict[str, Any]:
        return {"multiple": 1, "out_channels": 1}

    def load(self) -> Any:
        return self

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        try:
            fd = os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return box_predictor(batch)
        os.close(fd)
        os._exit(1)


def test_killed_worker_is_replaced_and_output_is_exact(tmp_path: Path, stack: np.ndarray, client: Any) -> None:
    flag = tmp_path / "died"
    res = bw.predict_blockwise(stack, tmp_path / "p.zarr", req(DieOnceSource(str(flag))), chunks=CHUNKS,
                               block=CHUNKS, scheduler=client)
    assert flag.exists() and res.blocks_computed == 8  # one worker died mid-block; its task ran again elsewhere
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "p.zarr"), mode="r")[:],
                                  predict_array(stack, box_predictor, tile=TILE))
    client.wait_for_workers(2, timeout=30)
