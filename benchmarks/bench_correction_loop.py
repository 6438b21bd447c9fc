"""Correction-loop benchmark (issue 11): does one click of Fine-tune make the model better on a new EM stack?

Protocol, on ``../shared/data/vnc/`` stack1 (another animal, microscope and contrast than ISBI 2012) and on a
harder shift built from it: 2 "corrected" slices (their hand labels stand in for the user's corrections), the
one-click defaults (``FinetuneOptions()``: the service the button and ``neuroedge finetune`` run), evaluated on
5 other slices: pixel error, boundary F1 exact and at 2 px, Rand error and VI of the watershed instances and of
the thresholded membranes (connected components of the non-membrane), before (zero-shot default model) and
after, and the fine-tune's wall time. Targets: <= 120 s, F1 exact up by >= 0.1 on the hard shift, Rand error of
the instances lower than zero-shot on every shift.

Shifts: ``vnc`` (as it is: 4.6 nm pixels, 1 = membrane, about 20% membrane); ``vnc-hard`` (pixels binned 2x2 to
9.2 nm, gamma 1.6 and contrast x 0.6: a fainter, coarser microscope, and a thinner label convention: membranes
skeletonised and redrawn 1 px wide on each side, 3 px in all).

Usage: ``python benchmarks/bench_correction_loop.py [--shifts vnc,vnc-hard] [--time-limit 100] [--quick]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import _common as C

VNC = Path(__file__).resolve().parents[2] / "shared" / "data" / "vnc"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shifts", default="vnc,vnc-hard")
    p.add_argument("--train-slices", default="0,1", help="the 'corrected' slices (default 0,1)")
    p.add_argument("--eval-slices", default="10,11,12,13,14", help="evaluated slices (default 10-14)")
    p.add_argument("--time-limit", type=float, help="override the one-click time limit (s)")
    p.add_argument("--loss", help="override the loss, e.g. bce=1,skeleton_recall=0.5")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="crops of the slices and 5 s of training (smoke test)")
    return p.parse_args(argv)


def load_shift(name: str, quick: bool) -> tuple[np.ndarray, np.ndarray]:
    """(z, y, x) uint8 raw and uint8 membrane labels (1 = membrane) of one shift."""
    import tifffile
    from skimage.morphology import dilation, skeletonize, square

    raw = tifffile.imread(VNC / "stack1-raw.tif")
    lab = (tifffile.imread(VNC / "stack1-membranes.tif") > 0).astype(np.uint8)
    if quick:
        raw, lab = raw[:, :256, :256], lab[:, :256, :256]
    if name == "vnc":
        return raw, lab
    if name != "vnc-hard":
        raise SystemExit(f"unknown shift {name!r}")
    z, h, w = raw.shape
    binned = raw[:, : h // 2 * 2, : w // 2 * 2].reshape(z, h // 2, 2, w // 2, 2).astype(np.float32).mean((2, 4))
    faint = 255.0 * (binned / 255.0) ** 1.6
    faint = (faint - faint.mean()) * 0.6 + faint.mean()
    lab2 = lab[:, : h // 2 * 2, : w // 2 * 2].reshape(z, h // 2, 2, w // 2, 2).max((2, 4))
    thin = np.stack([dilation(skeletonize(s > 0), square(3)) for s in lab2]).astype(np.uint8)
    return np.clip(faint, 0, 255).astype(np.uint8), thin


def measure(prob: np.ndarray, gt: np.ndarray, threshold: float) -> dict[str, float]:
    """The metrics of a probability stack, instances from the watershed and from the thresholded membranes."""
    from napari_neuroedge.inference.postprocess import instances_from_probability
    from napari_neuroedge.metrics import evaluate

    inst = evaluate(prob, gt, instances_fn=instances_from_probability, threshold=threshold)
    mem = evaluate((prob >= threshold).astype(np.uint8), gt)
    return {"pixel": inst["pixel_error"], "f1_exact": inst["boundary_f1_exact"], "f1_2px": inst["boundary_f1"],
            "rand": inst["rand_error"], "vi_split": inst["vi_split"], "vi_merge": inst["vi_merge"],
            "rand_mem": mem["rand_error"], "vi_mem": mem["vi_total"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (VNC / "stack1-raw.tif").exists():
        print(f"VNC data not found at {VNC}: nothing to measure")
        return 0
    from napari_neuroedge.config import FinetuneOptions, NormConfig, parse_loss
    from napari_neuroedge.inference.predict import TorchPredictor, predict_array
    from napari_neuroedge.models.checkpoint import load_checkpoint
    from napari_neuroedge.progress import drive
    from napari_neuroedge.training.dataset import slices_from_arrays
    from napari_neuroedge.training.finetune import iter_finetune

    C.set_threads(args.threads)
    C.print_header("bench_correction_loop: one-click fine-tune on a new stack (issue 11)", "cpu", args.quick)
    parent = load_checkpoint("default")
    opts = FinetuneOptions(threads=args.threads)
    if args.time_limit is not None or args.quick:
        opts = dataclasses.replace(opts, time_limit_s=5.0 if args.quick else args.time_limit)
    if args.loss:
        opts = dataclasses.replace(opts, loss=parse_loss(args.loss))
    print(f"  options: {opts}")
    train_z = [int(v) for v in args.train_slices.split(",")]
    eval_z = [int(v) for v in args.eval_slices.split(",")]
    rows: list[list[str]] = []
    work = Path(tempfile.mkdtemp(prefix="neuroedge-loop-"))
    for shift in args.shifts.split(","):
        raw, lab = load_shift(shift, args.quick)
        print(f"\n[{shift}] {raw.shape} raw, {lab.mean():.1%} membrane; train on slices {train_z}, evaluate on "
              f"{eval_z}", flush=True)
        before = predict_array(raw[eval_z], TorchPredictor(parent.build(), "cpu"), norm=parent.norm)
        m0 = measure(before, lab[eval_z], parent.threshold)
        data = slices_from_arrays(raw, lab, parent.norm, train_z, source=f"vnc stack1 ({shift})")
        t0 = time.perf_counter()
        outcome = drive(iter_finetune(parent, data, work / f"{shift}.run", work / f"{shift}.pt", options=opts))
        wall = time.perf_counter() - t0
        ft = load_checkpoint(outcome.path)
        after = predict_array(raw[eval_z], TorchPredictor(ft.build(), "cpu"), norm=ft.norm)
        m1 = measure(after, lab[eval_z], ft.threshold)
        print(f"  fine-tune: {outcome.steps} steps in {wall:.0f} s; threshold {ft.threshold:g} "
              f"({outcome.threshold_source}); held-out {outcome.best_metrics}; notes {outcome.notes}")
        for name, m in (("zero-shot", m0), ("fine-tuned", m1)):
            print("  " + name.ljust(11) + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
            rows.append([shift, name, *(f"{m[k]:.4f}" for k in m), f"{wall:.0f} s" if name != "zero-shot" else ""])
        C.ratio_line(f"finetune_wall_s_{shift}", wall, C.target_note(wall, "<=", 120))
        C.ratio_line(f"f1_exact_gain_{shift}", max(m1["f1_exact"] - m0["f1_exact"], 1e-6),
                     C.target_note(m1["f1_exact"] - m0["f1_exact"], ">=", 0.1) + " (target on the hard shift)")
        C.ratio_line(f"rand_after_over_before_{shift}", m1["rand"] / max(m0["rand"], 1e-9),
                     C.target_note(m1["rand"] / max(m0["rand"], 1e-9), "<", 1.0))
    C.print_readme_table(["shift", "model", "pixel", "F1 exact", "F1 2px", "Rand", "VI split", "VI merge",
                          "Rand (membranes)", "VI (membranes)", "fine-tune wall"], rows,
                         f"VNC stack1, corrected slices {train_z}, evaluated on {eval_z}, no TTA, "
                         f"{args.threads} threads (`python benchmarks/bench_correction_loop.py`).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
