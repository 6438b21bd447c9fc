"""Inference benchmark (issue 2): tiling overhead, MONAI comparison, TTA cost, memory on a 100 Mpx image.

All in one run, same model (the bundled ``default``), same input, printed as ratios:

1. tiled pipeline (``predict_array``: normalise, mirror-pad, tile, forward, blend) / pure model forward on the
   same tiles' pixels (pre-cut tensors, batches of ``--batch``, nothing else); target <= 1.10;
2. ours / MONAI ``sliding_window_inference`` (gaussian, same roi = tile, overlap, sw_batch_size = batch, same
   model, sigmoid included on both sides): time in this process (interleaved repeats, on a 1536^2 image where
   both run 16 tiles: we mirror-pad half an overlap around the image, so on other sizes we may run more tiles;
   a per-tile ratio is printed too), and peak RSS of the whole job (uint8 TIFF in -> uint8 labels out) on a
   2048^2 image, each in a fresh subprocess: ours is ``neuroedge predict`` (memory-mapped input, streamed
   output), MONAI's needs the whole image as a tensor; targets: not slower, less memory;
3. 6-way TTA / single pass (``TorchPredictor`` with ``TTAConfig(n=6)``); target <= 6.3;
4. peak RSS of ``neuroedge predict`` on a 9958 x 9959 uint8 memory-mapped TIFF (``--sink`` tiff or zarr
   output) beside the same run on the 2048^2 image: bounded and independent of image size (target < 2 GiB).

Usage: ``python benchmarks/bench_inference.py [--quick] [--skip-huge] [--threads 2]``. The full run takes about
6-7 minutes on 2 idle CPU cores (about 0.4 s per 512^2 tile), 4-5 of them the 100 Mpx case (676 tiles);
``--quick`` uses tiny sizes (< 1 minute).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import _common as C

HUGE = (9958, 9959)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, < 1 minute (smoke test)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2; 0 = torch's default)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--size", type=int, help="square image of the timing cases (default 1536, where we and MONAI "
                   "run the same number of tiles; quick 192)")
    p.add_argument("--mem-size", type=int, help="square image of the memory runs (default 2048; quick 128)")
    p.add_argument("--tta-size", type=int, help="image size of the TTA case (default 768; quick 96)")
    p.add_argument("--tile", type=int, help="tile size (default 512; quick 64)")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, help="timed repeats per candidate (default 3; quick 2)")
    p.add_argument("--skip-huge", action="store_true", help="skip the 9958 x 9959 case (the slowest part)")
    p.add_argument("--sink", choices=["tiff", "zarr"], default="tiff", help="output format of the memory runs")
    p.add_argument("--workdir", help="where to write the test images (default: a temporary folder)")
    p.add_argument("--child", help=argparse.SUPPRESS)  # JSON job description: run one memory job and exit
    args = p.parse_args(argv)
    q = args.quick
    args.size = args.size or (192 if q else 1536)
    args.mem_size = args.mem_size or (128 if q else 2048)
    args.tta_size = args.tta_size or (96 if q else 768)
    args.tile = args.tile or (64 if q else 512)
    args.repeats = args.repeats or (2 if q else 3)
    args.huge = (320, 321) if q else HUGE
    return args


# ---------------------------------------------------------------------------------------- child jobs

def child_main(spec: dict[str, Any]) -> None:
    """One memory job in a fresh process: "ours" (the CLI) or "monai"; prints its RESULT line.

    Both sides import what their job needs before the baseline is taken (so library imports count in neither
    the job's time nor its 'work' memory), then load the model, read, predict and write inside the job.
    """
    import importlib

    import torch

    if spec["threads"] > 0:
        torch.set_num_threads(spec["threads"])
    from napari_neuroedge import cli

    preload = ["tifffile", "tqdm", "napari_neuroedge.io", "napari_neuroedge.inference.predict",
               "napari_neuroedge.inference.postprocess", "napari_neuroedge.models.checkpoint"]
    for name in preload + (["zarr"] if spec["output"].endswith(".zarr") else []):
        importlib.import_module(name)

    tile_args = ["--tile", str(spec["tile"]), "--overlap", str(spec["overlap"]), "--batch", str(spec["batch"])]
    if spec["impl"] == "ours":
        def job() -> dict[str, Any]:
            rc = cli.main(["predict", spec["input"], "-o", spec["output"], *tile_args, "--device", spec["device"],
                           "--quiet"])
            if rc != 0:
                raise SystemExit(f"neuroedge predict failed with exit code {rc}")
            return {}
    else:
        import tifffile
        from monai.inferers import sliding_window_inference

        from napari_neuroedge.inference.normalize import normalize_slice
        from napari_neuroedge.models.checkpoint import load_model

        def job() -> dict[str, Any]:
            model, ckpt = load_model("default")
            model = model.to(spec["device"])
            image = tifffile.imread(spec["input"])
            x = torch.from_numpy(normalize_slice(image, ckpt.norm))[None, None].to(spec["device"])
            with torch.inference_mode():
                prob = sliding_window_inference(x, (spec["tile"], spec["tile"]), spec["batch"],
                                                lambda b: torch.sigmoid(model(b)), overlap=spec["overlap"],
                                                mode="gaussian")
            labels = (prob[0, 0] >= 0.5).to(torch.uint8).cpu().numpy()
            tifffile.imwrite(spec["output"], labels)
            return {}

    C.emit_result(C.memory_report(job))


def memory_job(impl: str, image_path: Path, out_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run one memory job in a fresh subprocess; returns its RESULT dict."""
    suffix = ".zarr" if (impl == "ours" and args.sink == "zarr") else ".tif"
    out = out_dir / f"{image_path.stem}_{impl}{suffix}"
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    spec = {"impl": impl, "input": str(image_path), "output": str(out), "tile": args.tile, "overlap": args.overlap,
            "batch": args.batch, "threads": args.threads, "device": args.device}
    result = C.run_child([str(Path(__file__).resolve()), "--child", json.dumps(spec)])
    shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
    return result


# --------------------------------------------------------------------------------------------- helpers

def write_huge_tiff(path: Path, shape: tuple[int, int], pattern: np.ndarray) -> None:
    """A (H, W) uint8 uncompressed TIFF filled with ``pattern`` tiled, written in row blocks (little memory)."""
    import tifffile

    mm = tifffile.memmap(str(path), shape=shape, dtype=np.uint8, bigtiff=False, photometric="minisblack")
    ph, pw = pattern.shape
    reps = math.ceil(shape[1] / pw)
    for y0 in range(0, shape[0], ph):
        y1 = min(y0 + ph, shape[0])
        mm[y0:y1] = np.tile(pattern[: y1 - y0], (1, reps))[:, : shape[1]]
    mm.flush()
    del mm


def monai_windows(size: int, roi: int, overlap: float) -> int:
    """Windows MONAI's sliding window runs on a square image (its scan-interval rule)."""
    if size <= roi:
        return 1
    interval = max(int(roi * (1 - overlap)), 1)
    return (math.ceil((size - roi) / interval) + 1) ** 2


# ------------------------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0
    import tifffile
    import torch

    from napari_neuroedge.config import TileConfig, TTAConfig
    from napari_neuroedge.inference.normalize import apply_stats, slice_stats
    from napari_neuroedge.inference.predict import TorchPredictor, predict_array
    from napari_neuroedge.inference.tiling import make_grid, read_window
    from napari_neuroedge.models.checkpoint import load_model
    from napari_neuroedge.sample import synthetic_em

    clock = C.Stopwatch()
    C.set_threads(args.threads)
    C.print_header("bench_inference: tiled inference engine (issue 2)", args.device, args.quick)
    model, ckpt = load_model("default")
    model = model.to(args.device).eval()
    dev = torch.device(args.device)
    norm = ckpt.norm
    print(f"  model: default ({ckpt.arch} {ckpt.arch_kwargs}); synthetic EM uint8 images; tile {args.tile}, "
          f"overlap {args.overlap}, batch {args.batch}; median of {args.repeats} interleaved repeats after a warm-up")
    big = max(args.size, args.mem_size, args.tta_size)
    full = synthetic_em((big, big), cell_size=40, seed=0).image
    image = np.ascontiguousarray(full[: args.size, : args.size])
    tile = TileConfig(tile=args.tile, overlap=args.overlap, batch=args.batch, blend="gaussian")
    grid = make_grid(args.size, args.size, args.tile, args.overlap, int(getattr(model, "multiple", 1)))
    t = grid.tile

    # ---- 1 + 2 (time): pure forward vs our pipeline vs MONAI, interleaved
    stats = slice_stats(image, norm)
    tiles = torch.from_numpy(np.stack([apply_stats(read_window(image, y, x, t, t), stats)
                                       for y in grid.ys for x in grid.xs])[:, None]).to(dev)
    batches = list(torch.split(tiles, args.batch))
    predictor = TorchPredictor(model, args.device, amp=False)

    def pure() -> None:
        with torch.inference_mode():
            for b in batches:
                model(b)

    last: dict[str, np.ndarray] = {}  # each candidate's latest output, to compare results without re-running

    def ours() -> None:
        last["ours"] = predict_array(image, predictor, tile=tile, norm=norm)

    candidates: dict[str, Any] = {"pure forward": pure, "ours (tiled)": ours}
    monai_count = [0]
    try:
        from monai.inferers import sliding_window_inference

        def monai_predictor(b: torch.Tensor) -> torch.Tensor:
            monai_count[0] += int(b.shape[0])
            return torch.sigmoid(model(b))

        def monai() -> None:
            x = torch.from_numpy(apply_stats(image, stats))[None, None].to(dev)
            with torch.inference_mode():
                y = sliding_window_inference(x, (t, t), args.batch, monai_predictor, overlap=args.overlap,
                                             mode="gaussian")
            last["monai"] = y[0, 0].cpu().numpy()

        candidates["MONAI sliding_window"] = monai
    except ImportError:
        print("  MONAI not installed: the MONAI comparison is skipped (pip install monai)")
    print(f"\n[1-2] {args.size}^2 image: {grid.n_tiles} tiles of {t}^2 for us", flush=True)
    with torch.inference_mode():
        model(batches[0])  # warm-up: one batch (a full warm-up run of each candidate would double the run time)
    tm = C.interleaved(candidates, args.repeats, warmup=0, device=args.device)
    for name, timing in tm.items():
        print(f"  {name:22s} {timing}")
    rows: list[list[str]] = []
    r_pipe = tm["ours (tiled)"].median / tm["pure forward"].median
    C.ratio_line("tiled_over_pure_forward", r_pipe, C.target_note(r_pipe, "<=", 1.10))
    rows.append(["tiled pipeline / pure forward (same tiles)", f"{r_pipe:.3f}", "<= 1.10"])
    per_tile_ours = tm["ours (tiled)"].median / grid.n_tiles
    if "MONAI sliding_window" in tm:
        n_monai = monai_count[0] // args.repeats
        print(f"  MONAI ran {n_monai} windows (formula: {monai_windows(args.size, t, args.overlap)}); we ran "
              f"{grid.n_tiles} (+ half an overlap of mirrored border context)")
        diff = np.abs(last["ours"] - last["monai"]).mean()
        print(f"  mean |ours - MONAI| probability difference: {diff:.4f}")
        r_time = tm["ours (tiled)"].median / tm["MONAI sliding_window"].median
        r_tile = per_tile_ours / (tm["MONAI sliding_window"].median / max(n_monai, 1))
        C.ratio_line("ours_over_monai_time", r_time, C.target_note(r_time, "<=", 1.0))
        C.ratio_line("ours_over_monai_time_per_tile", r_tile, C.target_note(r_tile, "<=", 1.0))
        rows.append(["ours / MONAI time (whole image)", f"{r_time:.3f}", "<= 1 (not slower)"])
        rows.append(["ours / MONAI time per tile", f"{r_tile:.3f}", "<= 1"])
    del tiles, batches

    # ---- 3: TTA 6 / single pass
    small = np.ascontiguousarray(full[: args.tta_size, : args.tta_size])
    p6 = TorchPredictor(model, args.device, amp=False, tta=TTAConfig(n=6))
    print(f"\n[3] TTA on a {args.tta_size}^2 image", flush=True)
    tt = C.interleaved({"single pass": lambda: predict_array(small, predictor, tile=tile, norm=norm),
                        "TTA 6": lambda: predict_array(small, p6, tile=tile, norm=norm)},
                       args.repeats, warmup=0, device=args.device)
    for name, timing in tt.items():
        print(f"  {name:22s} {timing}")
    r_tta = tt["TTA 6"].median / tt["single pass"].median
    C.ratio_line("tta6_over_single", r_tta, C.target_note(r_tta, "<=", 6.3))
    rows.append(["TTA 6 / single pass", f"{r_tta:.3f}", "<= 6.3"])

    # ---- 2 (memory) + 4: fresh subprocesses
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="neuroedge-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        img_path = workdir / f"img_{args.mem_size}.tif"
        tifffile.imwrite(str(img_path), np.ascontiguousarray(full[: args.mem_size, : args.mem_size]))
        print(f"\n[2] peak memory of the whole job (uint8 TIFF in, uint8 labels out, {args.sink} for ours), "
              "each in a fresh process; 'work' = peak minus RSS after imports", flush=True)
        mem = {"ours": memory_job("ours", img_path, workdir, args)}
        if "MONAI sliding_window" in tm:
            mem["monai"] = memory_job("monai", img_path, workdir, args)
        for name, r in mem.items():
            work = C.mib(r["peak_rss"] - r["base_rss"])
            print(f"  {name:6s} {args.mem_size}^2: peak RSS {C.mib(r['peak_rss'])} (work {work}, peak anon "
                  f"{C.mib(r['peak_anon'])}), job {r['wall_s']:.1f} s")
        if "monai" in mem:
            o, m = mem["ours"], mem["monai"]
            r_mem = o["peak_rss"] / m["peak_rss"]
            r_work = (o["peak_rss"] - o["base_rss"]) / max(m["peak_rss"] - m["base_rss"], 1)
            C.ratio_line("ours_over_monai_peak_rss", r_mem, C.target_note(r_mem, "<=", 1.0))
            C.ratio_line("ours_over_monai_work_rss", r_work, "peak minus RSS after imports")
            C.ratio_line("ours_over_monai_time_subprocess", o["wall_s"] / m["wall_s"], "whole job incl. model load")
            rows.append([f"ours / MONAI peak RSS ({args.mem_size}^2, fresh processes)", f"{r_mem:.3f}",
                         "< 1 (less memory)"])

        if args.skip_huge:
            print("\n[4] skipped (--skip-huge)")
        else:
            hh, hw = args.huge
            hgrid = make_grid(hh, hw, args.tile, args.overlap, int(getattr(model, "multiple", 1)))
            est = per_tile_ours * hgrid.n_tiles
            print(f"\n[4] {hh} x {hw} uint8 image ({hh * hw / 1e6:.1f} Mpx, {hgrid.n_tiles} tiles): estimated "
                  f"{est / 60:.1f} min at this run's speed (elapsed so far {clock() / 60:.1f} min)", flush=True)
            huge_path = workdir / f"img_{hh}x{hw}.tif"
            write_huge_tiff(huge_path, (hh, hw), full[: min(1024, big), : min(1024, big)])
            huge = memory_job("ours", huge_path, workdir, args)
            huge_path.unlink()
            small_run = mem["ours"]
            print(f"  ours {hh}x{hw}: peak RSS {C.mib(huge['peak_rss'])} (work "
                  f"{C.mib(huge['peak_rss'] - huge['base_rss'])}, peak anon {C.mib(huge['peak_anon'])}), job "
                  f"{huge['wall_s']:.1f} s; {args.mem_size}^2: peak RSS {C.mib(small_run['peak_rss'])}, peak anon "
                  f"{C.mib(small_run['peak_anon'])}")
            r_huge = huge["peak_rss"] / small_run["peak_rss"]
            r_anon = huge["peak_anon"] / small_run["peak_anon"]
            ok = "met" if huge["peak_rss"] < 2 * 1024 * C.MiB else "NOT met"
            print(f"  huge peak RSS {C.mib(huge['peak_rss'])}: target < 2048 MiB: {ok}")
            C.ratio_line("huge_over_small_peak_rss", r_huge, "independent of image size: ~1 (includes file pages "
                         "of the memory-mapped input/output)")
            C.ratio_line("huge_over_small_peak_anon", r_anon, "independent of image size: ~1")
            rows.append([f"peak RSS, {hh} x {hw} ({args.sink} out)", C.mib(huge["peak_rss"]), "< 2 GiB, bounded"])
            rows.append([f"peak RSS, {args.mem_size}^2 (same job)", C.mib(small_run["peak_rss"]), ""])
            rows.append(["peak RSS ratio huge / small", f"{r_huge:.3f}", "~1 (independent of size)"])
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    C.print_readme_table(["measure", "value", "target"], rows,
                         f"Default model on {args.device}, {C.set_threads(0)} threads, tile {args.tile}, overlap "
                         f"{args.overlap}, batch {args.batch}; ratios measured side by side in one run "
                         "(`python benchmarks/bench_inference.py`).")
    print(f"\n(total {clock() / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
