"""Scale benchmark: peak memory and throughput of out-of-core and blockwise (Dask) prediction.

Every case runs in a fresh Python subprocess, so its peak memory is its own:

* single-process ``iter_predict`` from an uncompressed (memory-mapped) TIFF into a memory-mapped TIFF, and from
  zarr into zarr, for 1k^2, 4k^2 and 10k^2 (9958 x 9959, the seed's size) images and a 64 x 4k x 4k stack;
* the bundled default model (U-Net base 16, depth 4) on a 1k^2 image, for a realistic throughput;
* the Dask path on one (z, y, x) zarr stack: single process, the threaded scheduler, and a local cluster of 1
  and 2 worker processes, all with the same small model and one torch thread per worker.

Memory columns: ``base`` = RSS after imports and model load, ``peak`` = the process's peak RSS (VmHWM), and
``anon`` = peak anonymous memory (RssAnon, sampled every 10 ms). Peak RSS also counts the file pages of
memory-mapped inputs/outputs that the job touched; the kernel drops those at will, so ``anon`` is what the
tile streaming must keep flat. Throughput is image pixels per second of job time (no imports, no model load).

Usage: ``python benchmarks/bench_scale.py [--quick] [--workdir DIR]``. ``--quick`` runs small sizes only
(under a minute); the full run takes about 10-15 minutes on 2 CPU cores. The large cases use a tiny model
(one 3x3 convolution) so that they measure the I/O and tiling machinery rather than the network.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import _common as C

TILE = {"tile": 1024, "context": 80, "batch": 4}


# ------------------------------------------------------------------------------------------------ inputs

def _texture(seed: int = 0) -> np.ndarray:
    from napari_neuroedge.io.sample import synthetic_em

    return synthetic_em((1024, 1024), cell_size=40, seed=seed).image


def _fill_slice(tex: np.ndarray, h: int, w: int, shift: int) -> np.ndarray:
    reps = (h // tex.shape[0] + 2, w // tex.shape[1] + 2)
    return np.tile(np.roll(tex, shift, axis=1), reps)[:h, :w]


def make_input(path: Path, shape: tuple[int, ...]) -> Path:
    """An EM-like uint8 image/stack at ``path`` (.tif: uncompressed, memory-mappable; .zarr: chunked 1024^2)."""
    if path.exists():
        return path
    tex = _texture()
    stack = shape if len(shape) == 3 else (1, *shape)
    if path.suffix == ".zarr":
        import zarr

        chunks = (1,) * (len(shape) - 2) + tuple(min(s, 1024) for s in shape[-2:])
        out = zarr.open(str(path), mode="w-", shape=shape, chunks=chunks, dtype="uint8")
    else:
        import tifffile

        out = tifffile.memmap(path, shape=shape, dtype=np.uint8, bigtiff=int(np.prod(shape)) > 2**31,
                              photometric="minisblack")
    for z in range(stack[0]):
        sl = _fill_slice(tex, stack[1], stack[2], 37 * z)
        if len(shape) == 3:
            out[z] = sl
        else:
            out[:] = sl
    if hasattr(out, "flush"):  # the TIFF memmap
        out.flush()
    del out
    return path


def make_models(workdir: Path) -> dict[str, str]:
    """Checkpoints: a tiny U-Net (base 4, depth 2) for the Dask comparison."""
    import torch

    from napari_neuroedge.config import NormConfig
    from napari_neuroedge.models.checkpoint import make_checkpoint, save_checkpoint
    from napari_neuroedge.models.unet import UNet

    path = workdir / "unet-tiny.pt"
    if not path.exists():
        torch.manual_seed(0)
        model = UNet(base=4, depth=2).eval()
        save_checkpoint(make_checkpoint(model, "unet", {"base": 4, "depth": 2}, NormConfig()), path)
    return {"unet-tiny": str(path)}


# ------------------------------------------------------------------------------------------- one case (child)

def _build_model(name: str) -> Any:
    """"conv": the tiny model, one fixed 3x3 convolution (logits); else a checkpoint name or path."""
    import torch

    if name == "conv":
        torch.manual_seed(0)
        return torch.nn.Conv2d(1, 1, 3, padding=1).eval()
    from napari_neuroedge.models.checkpoint import load_checkpoint

    return load_checkpoint(name).build()


def run_single(case: dict[str, Any]) -> dict[str, Any]:
    import torch

    from napari_neuroedge.config import NormConfig, TileConfig
    from napari_neuroedge.inference.predict import TorchPredictor, iter_predict
    from napari_neuroedge.io.stacks import open_output, open_stack
    from napari_neuroedge.progress import drive

    if case.get("threads"):
        torch.set_num_threads(int(case["threads"]))
    stack = open_stack(case["input"])
    predictor = TorchPredictor(_build_model(case["model"]), "cpu")
    tile = TileConfig(**TILE)
    shape = tuple(int(s) for s in stack.data.shape)
    base = C.current_rss()[0]
    with C.AnonSampler(every=0.01) as anon:
        t0 = time.perf_counter()
        with open_output(case["output"], shape, np.float32) as sink:
            drive(iter_predict(stack.data, predictor, [sink], tile=tile, norm=NormConfig()))
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "pixels": int(np.prod(shape)), "base": base, "peak": C.peak_rss(),
            "anon": anon.peak}


def _warm(spec: Any, tile: int, batch: int, volume: str | None = None) -> None:
    """Per-process set-up that is not throughput: load the model and run one batch, import zarr, open the input."""
    import zarr  # noqa: F401

    from napari_neuroedge.inference import blockwise as bw

    bw.cached_predictor(spec)(np.zeros((batch, 1, tile, tile), np.float32))
    if volume is not None:
        bw.volume_ref(volume).open()


def run_dask(case: dict[str, Any]) -> dict[str, Any]:
    """Single process vs threads vs local clusters of 1 and 2 workers on the same zarr stack."""
    import torch

    from napari_neuroedge.config import NormConfig, TileConfig
    from napari_neuroedge.inference import blockwise as bw
    from napari_neuroedge.inference.pipeline import PredictionRequest
    from napari_neuroedge.inference.predict import TorchPredictor, iter_predict
    from napari_neuroedge.io.stacks import open_output, open_stack
    from napari_neuroedge.models.checkpoint import load_checkpoint
    from napari_neuroedge.progress import drive

    tile = TileConfig(**TILE)
    out = Path(case["output"])
    stack = open_stack(case["input"])
    shape = tuple(int(s) for s in stack.data.shape)
    rows: dict[str, Any] = {"pixels": int(np.prod(shape))}

    torch.set_num_threads(1)
    predictor = TorchPredictor(load_checkpoint(case["ckpt"]).build(), "cpu")
    predictor(np.zeros((tile.batch, 1, tile.tile, tile.tile), np.float32))
    t0 = time.perf_counter()
    with open_output(out.with_name("single.zarr"), shape, np.float32) as sink:
        drive(iter_predict(stack.data, predictor, [sink], tile=tile, norm=NormConfig()))
    rows["single-process, 1 torch thread"] = {"seconds": time.perf_counter() - t0}

    spec = bw.ModelSpec(case["ckpt"], device="cpu", threads=1).resolved()
    _warm(spec, tile.tile, tile.batch)  # model load is not part of the throughput (as for the single process)
    t0 = time.perf_counter()
    request = PredictionRequest(model=spec, tile=tile)
    res = bw.predict_blockwise(case["input"], out.with_name("threads.zarr"), request, scheduler="threads",
                               workers=1)
    rows["dask threaded scheduler, 1 thread"] = {"seconds": time.perf_counter() - t0, "tiles": res.tiles}

    from distributed import Client

    for n in (1, 2):
        t0 = time.perf_counter()
        with bw.local_cluster(devices=["cpu"] * n) as cluster, Client(cluster) as client:
            client.run(_warm, spec, tile.tile, tile.batch, case["input"])  # per-worker set-up, not timed
            started = time.perf_counter() - t0
            t1 = time.perf_counter()
            res = bw.predict_blockwise(case["input"], out.with_name(f"cluster{n}.zarr"), request,
                                       scheduler=client)
            rows[f"dask LocalCluster, {n} worker process(es)"] = {
                "seconds": time.perf_counter() - t1, "start_s": started, "tiles": res.tiles}
    import zarr

    ref = zarr.open(str(out.with_name("single.zarr")), mode="r")
    diff = 0.0
    for name in ("threads.zarr", "cluster1.zarr", "cluster2.zarr"):
        other = zarr.open(str(out.with_name(name)), mode="r")
        for z in range(shape[0]):
            diff = max(diff, float(np.abs(other[z] - ref[z]).max()))
    rows["max_abs_diff_vs_single"] = diff
    return rows


def child(case: dict[str, Any]) -> None:
    res = run_dask(case) if case["kind"] == "dask" else run_single(case)
    print("RESULT " + json.dumps(res))


# ----------------------------------------------------------------------------------------------- driver

def run_case(case: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True,
                          env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"case {case['name']} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _mb(n: float) -> str:
    return f"{n / 2**20:8.0f}"


def tile_overhead(shape: tuple[int, ...]) -> str:
    """Extra tiles the blockwise path runs with default blocks (tiles straddling block borders run twice)."""
    from napari_neuroedge.inference import blockwise as bw
    from napari_neuroedge.inference.tiling import make_grid

    grid = make_grid(shape[-2], shape[-1], TILE["tile"], TILE["context"])
    chunks = bw.default_chunks(shape)
    blocks = bw.plan_blocks(shape, bw.default_block(shape, chunks))
    per_slice = [b for b in blocks if b.z0 == 0]
    n = sum(len(bw.block_tiles(grid, b)) for b in per_slice)
    return f"{len(per_slice)} block(s)/slice, {n} vs {grid.n_tiles} tiles (+{100 * (n / grid.n_tiles - 1):.0f}%)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes only (under a minute)")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        child(json.loads(args.case))
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="neuroedge-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    if args.quick:
        sizes = [(1024, 1024), (2048, 2048)]
        stack_shape: tuple[int, ...] = (3, 1024, 1024)
        default_shape: tuple[int, ...] = (256, 256)
        dask_shape: tuple[int, ...] = (2, 512, 512)
    else:
        sizes = [(1024, 1024), (4096, 4096), (9958, 9959)]
        stack_shape = (64, 4096, 4096)
        default_shape = (1024, 1024)
        dask_shape = (4, 1024, 1024)
    print(f"napari-neuroedge scale benchmark ({'quick' if args.quick else 'full'}), {os.cpu_count()} CPU(s), "
          f"tile <= {TILE['tile']} context {TILE['context']} px batch {TILE['batch']}, scratch {workdir}")
    print("models: 'conv' = TINY model (one fixed 3x3 convolution) for the large cases; 'default' = the bundled "
          "U-Net (base 16, depth 4); 'unet-tiny' = U-Net base 4 depth 2 for the Dask comparison\n")
    models = make_models(workdir)

    cases: list[dict[str, Any]] = []
    for shape in sizes:
        tag = "x".join(map(str, shape))
        cases.append({"name": f"{tag} tif->tif", "kind": "single", "model": "conv", "shape": list(shape),
                      "input": str(workdir / f"in-{tag}.tif"), "output": str(workdir / f"out-{tag}.tif")})
        cases.append({"name": f"{tag} zarr->zarr", "kind": "single", "model": "conv", "shape": list(shape),
                      "input": str(workdir / f"in-{tag}.zarr"), "output": str(workdir / f"out-{tag}.zarr")})
    tag = "x".join(map(str, stack_shape))
    cases.append({"name": f"{tag} tif->zarr", "kind": "single", "model": "conv", "shape": list(stack_shape),
                  "input": str(workdir / f"in-{tag}.tif"), "output": str(workdir / f"out-{tag}.zarr")})
    tag = "x".join(map(str, default_shape))
    cases.append({"name": f"{tag} tif->tif", "kind": "single", "model": "default", "shape": list(default_shape),
                  "input": str(workdir / f"in-{tag}.tif"), "output": str(workdir / f"out-{tag}-default.tif")})

    print(f"{'case':<26} {'model':<8} {'Mpx':>8} {'s':>7} {'Mpx/s':>7} {'base MB':>8} {'peak MB':>8} "
          f"{'anon MB':>8}  blockwise tiles (default blocks)")
    for case in cases:
        make_input(Path(case["input"]), tuple(case["shape"]))
        r = run_case(case)
        mpx = r["pixels"] / 1e6
        print(f"{case['name']:<26} {case['model']:<8} {mpx:8.1f} {r['seconds']:7.2f} {mpx / r['seconds']:7.2f} "
              f"{_mb(r['base'])} {_mb(r['peak'])} {_mb(r['anon'])}  {tile_overhead(tuple(case['shape']))}",
              flush=True)
        out = Path(case["output"])
        shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
        if tuple(case["shape"]) in (tuple(stack_shape),) or case["shape"][-1] > 4096:
            inp = Path(case["input"])
            shutil.rmtree(inp, ignore_errors=True) if inp.is_dir() else inp.unlink(missing_ok=True)

    tag = "x".join(map(str, dask_shape))
    dcase = {"name": f"dask {tag}", "kind": "dask", "input": str(workdir / f"in-{tag}.zarr"),
             "output": str(workdir / f"dask-{tag}" / "out.zarr"), "ckpt": models["unet-tiny"]}
    make_input(Path(dcase["input"]), dask_shape)
    Path(dcase["output"]).parent.mkdir(exist_ok=True)
    r = run_case(dcase)
    mpx = r.pop("pixels") / 1e6
    diff = r.pop("max_abs_diff_vs_single")
    print(f"\nDask path, {tag} zarr stack ({mpx:.1f} Mpx), model unet-tiny, 1 torch thread per worker, default "
          f"blocks (whole slices: no tile run twice):")
    single = r["single-process, 1 torch thread"]["seconds"]
    for name, v in r.items():
        extra = f"  (+{v['start_s']:.1f} s cluster start + worker set-up)" if "start_s" in v else ""
        print(f"  {name:<40} {v['seconds']:7.2f} s {mpx / v['seconds']:6.2f} Mpx/s  "
              f"x{single / v['seconds']:.2f} vs single{extra}")
    print(f"  max |difference| vs single-process output: {diff:.2e}")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
