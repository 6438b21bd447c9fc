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
skeletonised and redrawn 1 px wide on each side, 3 px in all); ``synthetic`` (a small synthetic EM stack: no data
needed, for the smoke test).

The peer: ``smp.Unet("resnet18", encoder_weights=None)`` (no weights are downloaded; ImageNet weights would not
be EM weights anyway). It has no pretrained weights for the domain, so it is started the way our parent was:
``--peer isbi`` (default) trains it from scratch on the same ISBI 2012 slices 0-19 with our from-scratch recipe
(the first stage of the default model, ``bench_peer.recipe``) for ``--peer-pretrain-minutes`` of wall time on the
same threads (default 45: our parent's from-scratch stage; our parent had about 140 minutes over three stages,
pass 140 to match all of it), then calibrates its membrane and seed thresholds on those slices as our parent's
were; the result is cached (``--peer-cache``) so later runs reuse it. ``--peer scratch`` starts it from random
weights instead (what a user without a domain model gets); ``--peer none`` skips it. Both models are then
fine-tuned by the same service with the same options, the same corrected slices, seed and time limit; the
fine-tune's TrainConfig differs in the model only (the peer is given our parent's fine-tune loss, which the
one-click recipe would otherwise take from each parent); the benchmark prints that difference.

Instances are the watershed of each model's probability at that model's seed threshold, as ``predict`` does.

Usage: ``python benchmarks/bench_correction_loop.py [--parent default] [--shifts vnc,vnc-hard] [--time-limit 100]
[--peer isbi] [--peer-pretrain-minutes 45] [--quick]``; ``--parent`` fine-tunes another bundled model or checkpoint
(e.g. ``casenet-r18``, ``dff-r18``: issue 25) in place of the default.
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
    p.add_argument("--parent", default="default", help="the model fine-tuned: a bundled name (default: default, "
                   "e.g. casenet-r18 or dff-r18) or a checkpoint path")
    p.add_argument("--train-slices", default="0,1", help="the 'corrected' slices (default 0,1)")
    p.add_argument("--eval-slices", default="10,11,12,13,14", help="evaluated slices (default 10-14)")
    p.add_argument("--time-limit", type=float, help="override the one-click time limit (s)")
    p.add_argument("--loss", help="override the loss, e.g. bce=1,skeleton_recall=0.5")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peer", choices=("isbi", "scratch", "none"), default="isbi",
                   help="the smp Unet(resnet18) peer: pretrained from scratch on ISBI 0-19 (default), random "
                   "weights, or no peer")
    p.add_argument("--peer-pretrain-minutes", type=float, default=45.0,
                   help="wall minutes of the peer's ISBI pretraining (default 45: our parent's from-scratch stage)")
    p.add_argument("--peer-cache", default=str(Path.home() / ".cache" / "napari-neuroedge" / "bench"),
                   help="folder of the pretrained peer checkpoints (reused across runs)")
    p.add_argument("--quick", action="store_true", help="crops of the slices, 3 s of training on 64 px crops, a "
                   "peer pretrained for seconds on synthetic data (smoke test)")
    return p.parse_args(argv)


def load_shift(name: str, quick: bool) -> tuple[np.ndarray, np.ndarray]:
    """(z, y, x) uint8 raw and uint8 membrane labels (1 = membrane) of one shift."""
    import tifffile
    from skimage.morphology import dilation, skeletonize, square

    if name == "synthetic":
        from napari_neuroedge.io.sample import synthetic_em

        stack = synthetic_em((16, 96, 96) if quick else (16, 512, 512), cell_size=24, seed=7)
        return stack.image, (stack.membrane > 0).astype(np.uint8)
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


def measure(prob: np.ndarray, gt: np.ndarray, ckpt: Any) -> dict[str, float]:
    """The metrics of a probability stack at the model's membrane threshold; instances from the watershed at the
    model's seed threshold and from the thresholded membranes."""
    from functools import partial

    from napari_neuroedge.inference.postprocess import instances_from_probability
    from napari_neuroedge.metrics import evaluate

    inst = evaluate(prob, gt, instances_fn=partial(instances_from_probability, seed_threshold=ckpt.seed_threshold),
                    threshold=ckpt.threshold)
    mem = evaluate((prob >= ckpt.threshold).astype(np.uint8), gt)
    return {"pixel": inst["pixel_error"], "f1_exact": inst["boundary_f1_exact"], "f1_2px": inst["boundary_f1"],
            "rand": inst["rand_error"], "vi_split": inst["vi_split"], "vi_merge": inst["vi_merge"],
            "rand_mem": mem["rand_error"], "vi_mem": mem["vi_total"]}


def peer_parent(args: argparse.Namespace, ours: Any, work: Path) -> tuple[Any, str]:
    """The peer's starting checkpoint and a line saying how it was made (see the module docstring)."""
    import bench_peer
    from napari_neuroedge.models.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
    from napari_neuroedge.models.registry import build_model

    if args.peer == "scratch":
        torch_seed(0)
        ckpt = make_checkpoint(build_model(bench_peer.PEER), bench_peer.PEER, {}, ours.norm,
                               provenance={"name": "smp-scratch"})
        return ckpt, "random weights (no pretraining)"
    minutes = 0.05 if args.quick else args.peer_pretrain_minutes
    cache = work if args.quick else Path(args.peer_cache).expanduser()
    path = cache / f"{bench_peer.PEER}-isbi-{minutes:g}min.pt"
    if path.exists():
        return load_checkpoint(path), f"pretrained on ISBI 0-19 for {minutes:g} min (cached: {path})"
    ckpt = pretrain_peer(args, minutes)
    save_checkpoint(ckpt, path)
    return ckpt, f"pretrained now on {ckpt.provenance['data']} for {minutes:g} min (saved: {path})"


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def pretrain_peer(args: argparse.Namespace, minutes: float) -> Any:
    """smp Unet(resnet18) trained from scratch with our from-scratch recipe on ISBI 0-19 (synthetic with
    --quick) for ``minutes`` of wall time, thresholds calibrated on those slices like our parent's."""
    import bench_peer
    from napari_neuroedge.config import SEED_THRESHOLD
    from napari_neuroedge.inference.predict import TorchPredictor, predict_array
    from napari_neuroedge.models.checkpoint import load_checkpoint
    from napari_neuroedge.progress import drive
    from napari_neuroedge.training.dataset import load_isbi, slices_from_arrays
    from napari_neuroedge.training.finetune import calibrate_thresholds
    from napari_neuroedge.training.loop import _IDENTITY_NORM, iter_fit

    base, source = bench_peer.recipe()
    cfg = dataclasses.replace(base, model=bench_peer.PEER, model_kwargs={}, steps=10**9, val_every=10**9,
                              time_limit_s=minutes * 60, threads=args.threads, device="cpu")
    if args.quick:
        from napari_neuroedge.io.sample import synthetic_em

        cfg = dataclasses.replace(cfg, batch=2, augment=dataclasses.replace(cfg.augment, crop=64))
        stack = synthetic_em((20, 96, 96), cell_size=24, seed=3)
        train, data = slices_from_arrays(stack.image, stack.membrane, cfg.norm, range(20), "synthetic"), "synthetic"
    else:
        root = bench_peer.find_isbi(None)
        if root is None:
            raise SystemExit("ISBI 2012 data not found (../shared/data/isbi2012): cannot pretrain the peer; "
                             "use --peer scratch or --peer none")
        train, data = load_isbi(root, range(20), cfg.norm), f"ISBI 2012 {root} slices 0-19"
    print(f"  [peer] pretraining {bench_peer.PEER} from scratch ({source}) on {data} for {minutes:g} min", flush=True)
    with tempfile.TemporaryDirectory(prefix="neuroedge-peer-") as run_dir:
        result = drive(iter_fit(cfg, train, [], run_dir, provenance={"name": f"{bench_peer.PEER}-isbi",
                                                                      "data": data}))
        ckpt = load_checkpoint(result.last)
    ckpt.optimizer = None
    predictor = TorchPredictor(ckpt.build(), "cpu")
    probs = [predict_array(s.image, predictor, norm=_IDENTITY_NORM) for s in train]
    # the fine-tune's own calibration (ties of the seed sweep go to the default seed threshold, the parent's here)
    ckpt.threshold, ckpt.seed_threshold, _, _ = calibrate_thresholds(probs, train, SEED_THRESHOLD)
    ckpt.provenance.update({"pretrain_steps": result.steps, "pretrain_minutes": minutes,
                            "calibrated_on": data})
    print(f"  [peer] {result.steps} steps; threshold {ckpt.threshold:g}, seed threshold {ckpt.seed_threshold:g} "
          f"(calibrated on {data})", flush=True)
    return ckpt


def finetune(parent: Any, data: list[Any], opts: Any, work: Path, name: str) -> tuple[Any, Any, float]:
    """(outcome, fine-tuned checkpoint, wall s) of the one-click service on ``data``."""
    from napari_neuroedge.models.checkpoint import load_checkpoint
    from napari_neuroedge.progress import drive
    from napari_neuroedge.training.finetune import iter_finetune

    t0 = time.perf_counter()
    outcome = drive(iter_finetune(parent, data, work / f"{name}.run", work / f"{name}.pt", options=opts))
    wall = time.perf_counter() - t0
    return outcome, load_checkpoint(outcome.path), wall


def config_difference(a: Any, b: Any) -> list[str]:
    """The fields in which two TrainConfigs differ ("model: unet != smp_unet_resnet18")."""
    from napari_neuroedge.config import to_dict

    da, db = to_dict(a), to_dict(b)
    return [f"{k}: {da[k]} != {db[k]}" for k in da if da[k] != db[k]]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shifts = args.shifts.split(",")
    if any(s != "synthetic" for s in shifts) and not (VNC / "stack1-raw.tif").exists():
        print(f"VNC data not found at {VNC}: nothing to measure (--shifts synthetic needs no data)")
        return 0
    from napari_neuroedge.config import FinetuneOptions, parse_loss
    from napari_neuroedge.inference.predict import TorchPredictor, predict_array
    from napari_neuroedge.models.checkpoint import load_checkpoint
    from napari_neuroedge.training.dataset import slices_from_arrays
    from napari_neuroedge.training.finetune import finetune_config, parent_recipe

    C.set_threads(args.threads)
    C.print_header("bench_correction_loop: one-click fine-tune on a new stack (issue 11)", "cpu", args.quick)
    parent = load_checkpoint(args.parent)
    print(f"  parent: {args.parent} ({parent.arch} {parent.arch_kwargs})")
    opts = FinetuneOptions(threads=args.threads)
    if args.quick:
        opts = dataclasses.replace(opts, time_limit_s=3.0, crop=64, batch=2)
    if args.time_limit is not None:
        opts = dataclasses.replace(opts, time_limit_s=args.time_limit)
    if args.loss:
        opts = dataclasses.replace(opts, loss=parse_loss(args.loss))
    print(f"  options: {opts}")
    train_z = [int(v) for v in args.train_slices.split(",")]
    eval_z = [int(v) for v in args.eval_slices.split(",")]
    rows: list[list[str]] = []
    work = Path(tempfile.mkdtemp(prefix="neuroedge-loop-"))
    models = {"ours": (parent, opts)}
    peer_registered = False
    if args.peer != "none":
        try:
            import bench_peer
            import segmentation_models_pytorch  # noqa: F401
        except ImportError:
            print("segmentation-models-pytorch is not installed: no peer (pip install segmentation-models-pytorch)")
        else:
            from napari_neuroedge.models import registry

            registry.ARCHITECTURES[bench_peer.PEER] = bench_peer.SmpUnetResNet18  # removed at the end
            peer_registered = True
            peer, how = peer_parent(args, parent, work)
            peer_opts = dataclasses.replace(opts, loss=opts.loss or parent_recipe(parent)[0])
            print(f"  peer: smp Unet(resnet18), {how}; fine-tune TrainConfig differs from ours in: "
                  + "; ".join(config_difference(finetune_config(parent, opts, False),
                                                finetune_config(peer, peer_opts, False))), flush=True)
            models["smp Unet(resnet18)"] = (peer, peer_opts)
    try:
        for shift in shifts:
            raw, lab = load_shift(shift, args.quick)
            print(f"\n[{shift}] {raw.shape} raw, {lab.mean():.1%} membrane; train on slices {train_z}, evaluate on "
                  f"{eval_z}", flush=True)
            after: dict[str, dict[str, float]] = {}
            for name, (start, run_opts) in models.items():
                before = predict_array(raw[eval_z], TorchPredictor(start.build(), "cpu"), norm=start.norm)
                m0 = measure(before, lab[eval_z], start)
                data = slices_from_arrays(raw, lab, start.norm, train_z, source=shift)
                outcome, ft, wall = finetune(start, data, run_opts, work, f"{shift}-{name.split()[0]}")
                prob = predict_array(raw[eval_z], TorchPredictor(ft.build(), "cpu"), norm=ft.norm)
                m1 = after[name] = measure(prob, lab[eval_z], ft)
                print(f"  {name}: fine-tune {outcome.steps} steps in {wall:.0f} s; threshold {ft.threshold:g} "
                      f"({outcome.threshold_source}), seed {ft.seed_threshold:g}; held-out {outcome.best_metrics}; "
                      f"notes {outcome.notes}")
                for label, m in (("zero-shot", m0), ("fine-tuned", m1)):
                    print(f"  {name} {label}".ljust(32) + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
                    rows.append([shift, name, label, *(f"{m[k]:.4f}" for k in m),
                                 f"{wall:.0f} s ({outcome.steps} steps)" if label != "zero-shot" else ""])
                key = "" if name == "ours" else "peer_"
                C.ratio_line(f"{key}finetune_wall_s_{shift}", wall, C.target_note(wall, "<=", 120))
                C.ratio_line(f"{key}f1_exact_gain_{shift}", max(m1["f1_exact"] - m0["f1_exact"], 1e-3),
                             C.target_note(m1["f1_exact"] - m0["f1_exact"], ">=", 0.1) + " (target on the hard shift)")
                C.ratio_line(f"{key}rand_after_over_before_{shift}", m1["rand"] / max(m0["rand"], 1e-9),
                             C.target_note(m1["rand"] / max(m0["rand"], 1e-9), "<", 1.0))
            if len(after) == 2:
                ours, peer_m = after["ours"], after["smp Unet(resnet18)"]
                for k, better in (("pixel", "lower"), ("f1_exact", "higher"), ("rand", "lower")):
                    r = max(ours[k], 1e-3) / max(peer_m[k], 1e-3)  # finite when a score is 0
                    won = r < 1 if better == "lower" else r > 1
                    C.ratio_line(f"ours_over_peer_{k}_after_{shift}", r,
                                 f"{better} is better; ours {'better' if won else 'not better'}")
    finally:
        if peer_registered:
            from napari_neuroedge.models import registry

            registry.ARCHITECTURES.pop(bench_peer.PEER, None)
    C.print_readme_table(["shift", "model", "", "pixel", "F1 exact", "F1 2px", "Rand", "VI split", "VI merge",
                          "Rand (membranes)", "VI (membranes)", "fine-tune wall"], rows,
                         f"{', '.join(shifts)}: corrected slices {train_z}, evaluated on {eval_z}, no TTA, "
                         f"{args.threads} threads; the same one-click fine-tune for both models "
                         f"(`python benchmarks/bench_correction_loop.py --peer {args.peer}`).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
