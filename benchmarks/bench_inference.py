"""Inference benchmark (issues 2 and 12): ours at its defaults vs MONAI vs the bare forward, at the sizes users have.

All in one run, same model (the bundled ``default``), same synthetic EM input, printed as ratios:

1. at each size (``--sizes``, default 512, 1024, 2048, 4096), TTA off and 6-way (``--tta-sizes``): ours
   (``predict_array`` with ``TileConfig()`` defaults: tiles as large as free memory allows (up to 2048 px,
   rectangular where that saves pixels) overlapping by the model's measured context, precision ``auto``,
   channels_last and batch norms folded on the CPU) / MONAI
   ``sliding_window_inference`` (fp32, roi 512, overlap 0.25, gaussian, sw_batch_size 4: the script a user
   writes) and / the floor (one bare forward pass over the whole slice in our precision and layout, TTA
   transforms included); targets ours/MONAI <= 0.35, ours/floor <= 1.15. Sizes above 2048 are timed once,
   after one untimed call of ours and the floor (MONAI cold: minutes per call). Then 9958 x 9959, TTA off,
   once (ours after one forward of its tile shape): ours / MONAI, and ours / the floor estimated from the
   largest size's floor per pixel (one forward pass over 99 Mpx would need ~15 GiB);
2. peak RSS of the whole job (uint8 TIFF in -> uint8 labels out) on a 2048^2 image, each in a fresh subprocess:
   ours is ``neuroedge predict`` (memory-mapped input, streamed output), MONAI's needs the whole image as a
   tensor; target: less memory;
3. the CPU's measured conv throughput (fp32 and bf16 autocast, a 3x3 conv of 32 channels) beside the model's
   GFLOP per megapixel, so the distance to the hardware limit is visible;
4. peak RSS of ``neuroedge predict`` on a 9958 x 9959 uint8 memory-mapped TIFF beside the 2048^2 run: bounded
   and independent of image size.

Usage: ``python benchmarks/bench_inference.py [--quick] [--skip-huge] [--threads 2]``; ``--quick`` uses tiny
sizes (< 1 minute).
"""

from __future__ import annotations

import argparse
import copy
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
    p.add_argument("--sizes", help="square image sizes of the timing cases (default 512,1024,2048,4096; quick "
                   "96,192)")
    p.add_argument("--tta-sizes", help="sizes also timed with 6-way TTA (default 512,1024,2048,4096; quick 96)")
    p.add_argument("--mem-size", type=int, help="square image of the memory runs (default 2048; quick 128)")
    p.add_argument("--tile", type=int, help="our largest tile (default: TileConfig's, 0 = as memory allows; quick 64)")
    p.add_argument("--monai-tile", type=int, help="MONAI's roi (default 512; quick 64)")
    p.add_argument("--overlap", type=float, default=0.25, help="MONAI's overlap fraction (default 0.25)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, help="timed repeats per candidate (default 3; quick 2)")
    p.add_argument("--skip-huge", action="store_true", help="skip the 9958 x 9959 case (the slowest part)")
    p.add_argument("--sink", choices=["tiff", "zarr"], default="tiff", help="output format of the memory runs")
    p.add_argument("--workdir", help="where to write the test images (default: a temporary folder)")
    p.add_argument("--child", help=argparse.SUPPRESS)  # JSON job description: run one memory job and exit
    args = p.parse_args(argv)
    q = args.quick
    args.sizes = [int(v) for v in (args.sizes or ("96,192" if q else "512,1024,2048,4096")).split(",")]
    args.tta_sizes = [int(v) for v in (args.tta_sizes or ("96" if q else "512,1024,2048,4096")).split(",") if v]
    args.mem_size = args.mem_size or (128 if q else 2048)
    args.tile = args.tile or (64 if q else 0)
    args.monai_tile = args.monai_tile or (64 if q else 512)
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

    preload = ["tifffile", "tqdm", "napari_neuroedge.io.stacks", "napari_neuroedge.inference.predict",
               "napari_neuroedge.inference.postprocess", "napari_neuroedge.models.checkpoint"]
    for name in preload + (["zarr"] if spec["output"].endswith(".zarr") else []):
        importlib.import_module(name)

    if spec["impl"] == "ours":
        tile_args = ["--tile", str(spec["tile"]), "--batch", str(spec["batch"])]

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
                prob = sliding_window_inference(x, (spec["monai_tile"], spec["monai_tile"]), spec["batch"],
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
            "monai_tile": args.monai_tile, "batch": args.batch, "threads": args.threads, "device": args.device}
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


def model_gflop_per_mpx(model: Any, device: Any) -> float:
    """GFLOP (2 x multiply-adds of every conv) per megapixel of the model, counted with torch's FLOP counter."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 1, 256, 256, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 1e9 / (256 * 256 / 1e6)


def conv_throughput(device: Any, quick: bool = False) -> dict[str, float]:
    """GFLOP/s of a 3x3, 32 -> 32 channel convolution on a (4, 32, 256, 256) channels_last batch, fp32 and bf16."""
    import time

    import torch

    conv = torch.nn.Conv2d(32, 32, 3, padding=1).to(device).to(memory_format=torch.channels_last)
    x = torch.randn(4, 32, 128 if quick else 256, 128 if quick else 256, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    flops = 2 * 32 * 32 * 9 * x.shape[0] * x.shape[2] * x.shape[3]
    out = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=dtype or torch.float32,
                                                     enabled=dtype is not None):
            conv(x)
            t = time.perf_counter()
            for _ in range(3):
                conv(x)
            out[name] = 3 * flops / (time.perf_counter() - t) / 1e9
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0
    import tifffile
    import torch

    from napari_neuroedge.config import TileConfig, TTAConfig
    from napari_neuroedge.inference.normalize import apply_stats, slice_stats
    from napari_neuroedge.inference.precision import cpu_has_native_bf16
    from napari_neuroedge.inference.predict import TorchPredictor, plan_grid, predict_array
    from napari_neuroedge.inference.tta import tta_predict
    from napari_neuroedge.models.checkpoint import load_model
    from napari_neuroedge.io.sample import synthetic_em

    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        sliding_window_inference = None
        print("  MONAI not installed: the MONAI comparison is skipped (pip install monai)")

    clock = C.Stopwatch()
    C.set_threads(args.threads)
    C.print_header("bench_inference: ours vs MONAI vs the bare forward (issues 2, 12)", args.device, args.quick)
    model, ckpt = load_model("default")
    model = model.to(args.device).eval()
    dev = torch.device(args.device)
    norm = ckpt.norm
    ours_tile = TileConfig(tile=args.tile)
    p1 = TorchPredictor(model, args.device)
    p6 = TorchPredictor(model, args.device, tta=TTAConfig(n=6))
    print(f"  model: default ({ckpt.arch} {ckpt.arch_kwargs}, context {ckpt.context} px); ours: tiles <= "
          f"{args.tile or p1.auto_tile()} px, {p1.describe()}, batch norms folded; MONAI: fp32, roi {args.monai_tile}, overlap {args.overlap}, batch "
          f"{args.batch}; median of {args.repeats} interleaved repeats after a warm-up")
    big = max(*args.sizes, args.mem_size)
    full = synthetic_em((big, big), cell_size=40, seed=0).image
    rows: list[list[str]] = []
    fp32_model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)  # MONAI's side: plain fp32

    for size in args.sizes:
        image = np.ascontiguousarray(full[:size, :size])
        stats = slice_stats(image, norm)
        x = torch.from_numpy(apply_stats(image, stats))[None, None].to(dev)
        grid = plan_grid(image.shape, ours_tile, p1)
        for tta, pred in ((1, p1), (6, p6)):
            if tta == 6 and size not in args.tta_sizes:
                continue
            last: dict[str, np.ndarray] = {}
            count = [0]

            def floor(pred: Any = pred) -> None:  # the whole slice in one forward (per TTA transform)
                pred(x.numpy())

            def ours(pred: Any = pred) -> None:
                last["ours"] = predict_array(image, pred, tile=ours_tile, norm=norm)

            candidates: dict[str, Any] = {"floor (bare forward)": floor, "ours": ours}
            if sliding_window_inference is not None:
                def monai(tta: int = tta) -> None:
                    def fwd(b: torch.Tensor) -> torch.Tensor:
                        count[0] += int(b.shape[0])
                        return torch.sigmoid(fp32_model(b))
                    with torch.inference_mode():
                        run = (lambda t: sliding_window_inference(t, (args.monai_tile,) * 2, args.batch, fwd,
                                                                  overlap=args.overlap, mode="gaussian"))
                        y = run(x) if tta == 1 else tta_predict(run, x, 6)
                    last["monai"] = y[0, 0].cpu().numpy()
                candidates["MONAI sliding_window"] = monai
            label = f"{size}^2, TTA {'off' if tta == 1 else tta}"
            big_case = size > 2048
            print(f"\n[1] {label}: ours {grid.n_tiles} tile(s) of {grid.tile_h} x {grid.tile_w} "
                  f"({grid.tile_pixels / size**2:.2f}x the image's pixels)", flush=True)
            if big_case:  # one untimed call of ours and the floor (not of MONAI, minutes here), so that neither
                floor()   # times oneDNN's set-up for its new shapes: a single cold call put 4096^2 at 1.23 once
                ours()
            tm = C.interleaved(candidates, 1 if big_case else args.repeats, warmup=0 if big_case else 1,
                               device=args.device)
            for name, timing in tm.items():
                print(f"  {name:22s} {timing}")
            key = f"{size}_tta{tta}"
            r_floor = tm["ours"].median / tm["floor (bare forward)"].median
            C.ratio_line(f"ours_over_floor_{key}", r_floor, C.target_note(r_floor, "<=", 1.15))
            row = [label, f"{tm['ours'].median:.2f} s", f"{r_floor:.2f}"]
            if "MONAI sliding_window" in tm:
                r_monai = tm["ours"].median / tm["MONAI sliding_window"].median
                n_monai = count[0] // (1 if big_case else args.repeats + 1) // (1 if tta == 1 else 6)
                diff = np.abs(last["ours"] - last["monai"]).mean()
                print(f"  MONAI ran {n_monai} windows of {args.monai_tile}^2 per pass; mean |ours - MONAI| {diff:.4f}")
                C.ratio_line(f"ours_over_monai_{key}", r_monai, C.target_note(r_monai, "<=", 0.35))
                row.append(f"{r_monai:.2f}")
            rows.append(row)
            if tta == 1:
                floor_per_mpx = tm["floor (bare forward)"].median / (size**2 / 1e6)
                per_mpx = tm["ours"].median / (size**2 / 1e6)

    # ---- 1b: 9958 x 9959, TTA off, timed once; the floor from the largest size's floor per pixel
    if not args.skip_huge:
        hh, hw = args.huge
        huge_img = np.tile(full, (math.ceil(hh / big), math.ceil(hw / big)))[:hh, :hw]
        hgrid = plan_grid(huge_img.shape, ours_tile, p1)
        print(f"\n[1b] {hh} x {hw}, TTA off: ours {hgrid.n_tiles} tiles of {hgrid.tile_h} x {hgrid.tile_w} "
              f"({hgrid.tile_pixels / (hh * hw):.2f}x the image's pixels); timed once", flush=True)
        candidates = {"ours": lambda: predict_array(huge_img, p1, tile=ours_tile, norm=norm)}
        p1(np.zeros((1, 1, hgrid.tile_h, hgrid.tile_w), np.float32))  # warm: its tile shape is new to the model
        if sliding_window_inference is not None:
            def monai_huge() -> None:
                xh = torch.from_numpy(apply_stats(huge_img, slice_stats(huge_img, norm)))[None, None].to(dev)
                with torch.inference_mode():
                    sliding_window_inference(xh, (args.monai_tile,) * 2, args.batch,
                                             lambda b: torch.sigmoid(fp32_model(b)), overlap=args.overlap,
                                             mode="gaussian")
            candidates["MONAI sliding_window"] = monai_huge
        tm_h = C.interleaved(candidates, 1, warmup=0, device=args.device)
        for name, timing in tm_h.items():
            print(f"  {name:22s} {timing}")
        est_floor = floor_per_mpx * hh * hw / 1e6
        r_floor = tm_h["ours"].median / est_floor
        print(f"  floor estimated from the {args.sizes[-1]}^2 floor: {est_floor:.1f} s")
        C.ratio_line("ours_over_floor_huge_tta1", r_floor, C.target_note(r_floor, "<=", 1.15))
        row = [f"{hh} x {hw}, TTA off (once; floor estimated)", f"{tm_h['ours'].median:.1f} s", f"{r_floor:.2f}"]
        if "MONAI sliding_window" in tm_h:
            r_monai = tm_h["ours"].median / tm_h["MONAI sliding_window"].median
            C.ratio_line("ours_over_monai_huge_tta1", r_monai, C.target_note(r_monai, "<=", 0.35))
            row.append(f"{r_monai:.2f}")
        rows.append(row)
        del huge_img

    # ---- 3: the hardware: conv throughput fp32 vs bf16, and the model's cost
    gflop = model_gflop_per_mpx(model, dev)
    tput = conv_throughput(dev, quick=args.quick)
    print(f"\n[3] hardware: 3x3 conv 32->32 ch: fp32 {tput['fp32']:.0f} GFLOP/s, bf16 autocast {tput['bf16']:.0f} "
          f"GFLOP/s (native bf16: {cpu_has_native_bf16()}); the default U-Net costs {gflop:.1f} GFLOP per Mpx: "
          f"at most {tput['fp32'] / gflop:.1f} Mpx/s in fp32 here")
    C.ratio_line("bf16_over_fp32_conv_throughput", tput["bf16"] / tput["fp32"], "> 1 only with native bf16")

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
            hgrid = plan_grid((hh, hw), ours_tile, p1)
            est = per_mpx * hh * hw / 1e6
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

    C.print_readme_table(["case", "ours", "ours / floor (<= 1.15)", "ours / MONAI (<= 0.35)"], rows,
                         f"Default model on {args.device}, {C.set_threads(0)} threads; ours at its defaults "
                         f"({p1.describe()}), MONAI fp32 roi {args.monai_tile} overlap {args.overlap}; ratios "
                         "measured side by side in one run (`python benchmarks/bench_inference.py`).")
    print(f"\n(total {clock() / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
