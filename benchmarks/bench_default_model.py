"""Default-model benchmark (issue 15): in-domain accuracy and zero-shot transfer of candidate models, one run.

Each model (bundled name or checkpoint path; ``default`` if none given) is evaluated at its own stored membrane
and seed thresholds, as ``neuroedge predict`` would use it:

1. ISBI 2012 slices 20-24 (never trained on), 6-way TTA: pixel error, boundary F1 at 2 px and exact, adapted
   Rand error and VI merge of the watershed instances. Targets (issue 15): pixel error <= 0.064, F1 (2 px) >=
   0.955, Rand error <= 0.02.
2. Zero-shot on other EM, TTA off (as the correction-loop benchmark measures its starting point), slices 10-14:
   ``vnc`` (VNC stack1 as it is), ``vnc-hard`` (binned 2x, gamma 1.6, contrast x0.6, labels 3 px wide: the loop
   benchmark's hard shift) and ``isbi-coarse`` (ISBI slices 20-24 binned 2x2 to 8 nm pixels, labels max-pooled:
   the same tissue at another pixel size). Target: no worse than the old default on ``vnc`` (pixel 0.078, F1
   exact 0.805, Rand 0.014), better on the shifts.

A peer checkpoint of ``bench_peer``'s smp ``Unet("resnet18")`` may be named too (its architecture is registered
here). Usage: ``python benchmarks/bench_default_model.py [MODEL ...] [--threads 2] [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

import _common as C

ISBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", default=["default"], help="bundled names or checkpoint paths")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="256 px crops of two slices (smoke test)")
    return p.parse_args(argv)


def isbi_sets(quick: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> ((z, y, x) uint8 raw, uint8 labels with 1 = membrane) of ISBI slices 20-24 and their 2x binning."""
    import tifffile

    raw = tifffile.imread(ISBI / "train-volume.tif")[20:25]
    lab = (tifffile.imread(ISBI / "train-labels.tif")[20:25] == 0).astype(np.uint8)
    if quick:
        raw, lab = raw[:2, :256, :256], lab[:2, :256, :256]
    z, h, w = raw.shape
    binned = raw.reshape(z, h // 2, 2, w // 2, 2).astype(np.float32).mean((2, 4)).round().astype(np.uint8)
    return {"isbi": (raw, lab), "isbi-coarse": (binned, lab.reshape(z, h // 2, 2, w // 2, 2).max((2, 4)))}


def measure(prob: np.ndarray, gt: np.ndarray, ckpt: Any) -> dict[str, float]:
    from napari_neuroedge.inference.postprocess import instances_from_probability
    from napari_neuroedge.metrics import evaluate

    r = evaluate(prob, gt, instances_fn=partial(instances_from_probability, seed_threshold=ckpt.seed_threshold),
                 threshold=ckpt.threshold)
    return {"pixel": r["pixel_error"], "f1_2px": r["boundary_f1"], "f1_exact": r["boundary_f1_exact"],
            "rand": r["rand_error"], "vi_merge": r["vi_merge"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (ISBI / "train-volume.tif").exists():
        print(f"ISBI 2012 data not found at {ISBI}: nothing to measure")
        return 0
    import bench_correction_loop as loop

    from napari_neuroedge.config import TTAConfig
    from napari_neuroedge.inference.predict import TorchPredictor, predict_array
    from napari_neuroedge.models import registry
    from napari_neuroedge.models.checkpoint import load_checkpoint

    try:
        import bench_peer

        registry.ARCHITECTURES.setdefault(bench_peer.PEER, bench_peer.SmpUnetResNet18)
    except ImportError:
        pass
    C.set_threads(args.threads)
    C.print_header("bench_default_model: accuracy and zero-shot transfer (issue 15)", "cpu", args.quick)
    sets = isbi_sets(args.quick)
    cases: list[tuple[str, np.ndarray, np.ndarray, int]] = [("isbi", *sets["isbi"], 6)]
    if (loop.VNC / "stack1-raw.tif").exists():
        for shift in ("vnc", "vnc-hard"):
            raw, lab = loop.load_shift(shift, args.quick)
            zs = [0, 1] if args.quick else [10, 11, 12, 13, 14]
            cases.append((shift, raw[zs], lab[zs], 1))
    else:
        print(f"  VNC data not found at {loop.VNC}: the vnc shifts are skipped")
    cases.append(("isbi-coarse", *sets["isbi-coarse"], 1))
    rows = []
    for name in args.models:
        ckpt = load_checkpoint(name)
        model = ckpt.build()
        print(f"\n[{name}] {ckpt.arch}, threshold {ckpt.threshold:g}, seed {ckpt.seed_threshold:g}", flush=True)
        for case, raw, lab, tta in cases:
            prob = predict_array(raw, TorchPredictor(model, "cpu", tta=TTAConfig(n=tta)), norm=ckpt.norm)
            m = measure(prob, lab, ckpt)
            print(f"  {case:12s} TTA {tta}: " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()), flush=True)
            rows.append([Path(name).stem, case, str(tta), *(f"{m[k]:.4f}" for k in m)])
            if case == "isbi":
                for key, op, target in (("pixel", "<=", 0.064), ("f1_2px", ">=", 0.955), ("rand", "<=", 0.02)):
                    C.ratio_line(f"{Path(name).stem}_isbi_{key}", m[key], C.target_note(m[key], op, target))
    C.print_readme_table(["model", "data", "TTA", "pixel error", "F1 (2 px)", "F1 exact", "Rand error",
                          "VI merge"], rows, "`python benchmarks/bench_default_model.py MODELS...`, each model at "
                         "its own thresholds; ISBI 20-24 with 6-way TTA, the shifts zero-shot without TTA.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
