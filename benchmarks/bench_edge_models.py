"""Edge-detector benchmark (issue 25): the seed's CASENet and DFF against the U-Net at equal CPU budget, one run.

Each model is trained from scratch by the project's loop (:func:`iter_fit`) on ISBI 2012 slices 0-19 for the
same budget of **process CPU time** (``time_clock="cpu"``, fixed threads: fair on a shared machine), in bf16
autocast where the CPU computes bf16 natively (``precision="auto"``), on the same crops (256 px, batch 4, same
seed, the seed's flips/rotations and contrast x U(0.9, 1.1), U-Net elastic deformation):

* ``unet``: the bundled default's from-scratch recipe (its model card, stage 1: loss 0.5 soft-F1 + 0.5 focal +
  0.25 Skeleton Recall, Adam 1e-3 for encoder and decoder: the seed's 10x head split diverges on a from-scratch
  U-Net);
* ``casenet-18`` / ``dff-18``: the seed's recipe on a ResNet-18 (the depth a 2-core CPU affords; the seed used
  ResNet-50 / 152 on a GPU): loss 0.5 soft-F1 + 0.5 focal (gamma 2, alpha 0.7) + 0.5 edge loss on the fused
  output and, deep-supervised, on the four bottom side outputs; Adam with a 10x head learning rate (1e-3 backbone,
  1e-2 head), poly 0.9. No ImageNet weights (none can be downloaded here; EM is not ImageNet anyway).

After training, each model's membrane and seed thresholds are calibrated on its **training** slices (6-way TTA,
:func:`finetune.calibrate_thresholds`) and its receptive context is measured, as a shipped checkpoint needs; then:

1. ISBI 2012 slices 20-24 (never trained on), 6-way TTA: pixel error, boundary F1 at 2 px and exact, adapted Rand
   error and VI merge of the watershed instances;
2. zero-shot, TTA off (as the correction-loop benchmark starts): VNC stack1 (``vnc``, 1 = membrane) and the loop
   benchmark's hard shift (``vnc-hard``: binned 2x, gamma 1.6, contrast x0.6, labels 3 px wide), slices
   ``--vnc-slices`` (default 10-14);
3. cost: training steps in the budget, inference CPU-seconds per megapixel (one 512^2 slice, TTA off, the
   predictor's precision; process CPU time, so other jobs on the machine do not inflate it) and GFLOP per
   megapixel (torch's FLOP counter, multiply-adds x 2).

``dff-18-mim`` (not in the default set) is the DFF whose backbone first spends ``--pretrain-minutes`` of the same
budget on masked-image modelling of unlabelled EM (ISBI's test volume and VNC stack2; no labels), then the rest
on the seed's recipe: does a label-free pretraining on EM replace the seed's ImageNet weights at equal total
budget (issue 25, item 2)?

Ratio lines compare each edge model with the U-Net (issue 25's target: boundary F1 (2 px) on ISBI within 10% of
the U-Net's, or ahead of it on zero-shot transfer). ``--save DIR`` keeps every trained, calibrated checkpoint.

Usage: ``python benchmarks/bench_edge_models.py [--minutes 8] [--threads 1] [--save DIR] [--quick]
[--models unet,casenet-18,dff-18,dff-18-mim] [--pretrain-minutes 2.5] [--no-reference]``; wall time
about 3 x minutes / threads of training plus ~5 CPU-minutes of calibration and evaluation. ``--quick`` trains
each model for 15 CPU-s on 64 px crops of a synthetic stack and evaluates crops of two slices (smoke test).
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import _common as C

# label -> (preset, model kwargs, lr backbone, lr head, loss spec)
SEED_LOSS = "f1=0.5,focal=0.5,edge=0.5"
MODELS: dict[str, tuple[str, dict[str, Any], float, float, str]] = {
    "unet": ("unet", {}, 1e-3, 1e-3, "f1=0.5,focal=0.5,skeleton_recall=0.25"),
    "casenet-18": ("casenet", {"depth": 18}, 1e-3, 1e-2, SEED_LOSS),
    "dff-18": ("dff", {"depth": 18}, 1e-3, 1e-2, SEED_LOSS),
    "dff-18-mim": ("dff", {"depth": 18}, 1e-3, 1e-2, SEED_LOSS),  # after --pretrain-minutes of MIM (see below)
}
PRETRAINED = {"dff-18-mim"}  # their backbone is first pretrained without labels, inside the same total budget
REFERENCE = "unet"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, help="process CPU minutes of training per model (default 8; quick 0.25)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, the same for every model (default 1)")
    p.add_argument("--models", default=",".join(m for m in MODELS if m not in PRETRAINED),
                   help=f"comma-separated, of {', '.join(MODELS)} (default %(default)s)")
    p.add_argument("--vnc-slices", default="10:15", help="VNC stack1 slices for the zero-shot figures (start:stop)")
    p.add_argument("--save", help="folder to keep each trained, calibrated checkpoint in (MODEL.pt)")
    p.add_argument("--pretrain-minutes", type=float, default=2.5, help="of the budget of the *-mim models: CPU "
                   "minutes of masked-image pretraining on unlabelled EM before the labelled training (default 2.5)")
    p.add_argument("--no-reference", action="store_true", help="do not add the U-Net reference to --models")
    p.add_argument("--quick", action="store_true", help="synthetic data, 15 CPU-s per model (smoke test)")
    args = p.parse_args(argv)
    args.minutes = args.minutes if args.minutes is not None else (0.25 if args.quick else 8.0)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(args.models) - set(MODELS)
    if unknown:
        p.error(f"unknown model(s) {sorted(unknown)}; choose from {', '.join(MODELS)}")
    if REFERENCE not in args.models and not args.no_reference:
        args.models.insert(0, REFERENCE)
    return args


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all its threads)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def train_config(label: str, minutes: float, threads: int, quick: bool) -> Any:
    from napari_neuroedge.config import AugmentConfig, TrainConfig, parse_loss

    preset, kwargs, lr_b, lr_h, loss = MODELS[label]
    return TrainConfig(model=preset, model_kwargs=dict(kwargs), lr_backbone=lr_b, lr_head=lr_h, batch=2 if quick else 4,
                       steps=10**9, val_every=10**9, time_limit_s=minutes * 60, time_clock="cpu", threads=threads,
                       device="cpu", precision="auto", loss=parse_loss(loss),
                       augment=AugmentConfig(crop=64 if quick else 256))


def unlabelled_em(quick: bool) -> list[np.ndarray]:
    """Normalised unlabelled EM slices for pretraining: ISBI 2012's test volume (30 x 512^2) and VNC stack2
    (20 x 1024^2; the same tissue as the VNC stack1 the zero-shot figures use, as a user's own stack would be)."""
    import bench_correction_loop as loop
    import bench_default_model as dm
    import tifffile

    from napari_neuroedge.config import NormConfig
    from napari_neuroedge.inference.normalize import normalize_slice

    if quick:
        from napari_neuroedge.io.sample import synthetic_em

        raws = list(synthetic_em((4, 96, 96), cell_size=24, seed=9).image)
    else:
        raws = [r for f in (dm.ISBI / "test-volume.tif", loop.VNC / "stack2-raw.tif") if f.exists()
                for r in tifffile.imread(f)]
    return [normalize_slice(r, NormConfig()) for r in raws]


def pretrain_mim(label: str, images: list[np.ndarray], seconds: float, crop: int, batch: int) -> tuple[Any, int]:
    """Masked-image modelling without labels: on random crops (flips / rotations) of ``images``, half of the
    16 x 16 patches are set to 0 and the whole network regresses their normalised intensities (MSE on the hidden
    pixels, fused and side outputs alike), Adam 1e-3, bf16 autocast, for ``seconds`` of process CPU time. Returns
    (a checkpoint with the pretrained backbone and a freshly initialised head, steps)."""
    import torch

    from napari_neuroedge.config import NormConfig
    from napari_neuroedge.inference.precision import autocast, resolve_precision
    from napari_neuroedge.models.checkpoint import make_checkpoint
    from napari_neuroedge.models.registry import build_model

    preset, kwargs, *_ = MODELS[label]
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_model(preset, **kwargs).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    precision = resolve_precision("auto", "cpu")
    patch, steps, c0 = 16, 0, cpu_seconds()
    while cpu_seconds() - c0 < seconds:
        crops = []
        for _ in range(batch):
            img = images[int(rng.integers(len(images)))]
            y, x = int(rng.integers(img.shape[0] - crop + 1)), int(rng.integers(img.shape[1] - crop + 1))
            c = np.rot90(img[y:y + crop, x:x + crop], int(rng.integers(4)))
            crops.append(c[:, ::-1] if rng.random() < 0.5 else c)
        target = torch.from_numpy(np.ascontiguousarray(np.stack(crops)[:, None], dtype=np.float32))
        hidden = torch.from_numpy(rng.random((batch, 1, crop // patch, crop // patch)) < 0.5).float()
        hidden = hidden.repeat_interleave(patch, 2).repeat_interleave(patch, 3)
        with autocast(precision, "cpu"):
            out = model.forward_train(target * (1 - hidden))
        outs = [out["fused"], *out["sides"]]
        loss = sum((((o.float() - target) ** 2) * hidden).sum() / hidden.sum() for o in outs) / len(outs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps += 1
        if steps == 1 or steps % 50 == 0:
            print(f"    MIM step {steps}: loss {loss.item():.4f}", flush=True)
    fresh = build_model(preset, **kwargs)
    result = fresh.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith("backbone.")},
                                   strict=False)
    assert not any(k.startswith("backbone.") for k in result.missing_keys)
    return make_checkpoint(fresh, preset, kwargs, NormConfig(), provenance={
        "name": f"{label}-pretrained", "pretraining": f"masked-image modelling, {steps} steps, {seconds:.0f} CPU-s"}), steps


def train(cfg: Any, train_slices: list[Any], run_dir: Path, init: Any = None) -> tuple[Any, dict[str, float]]:
    """Train per ``cfg`` (from ``init``'s weights if given), no validation; (last checkpoint, {steps, cpu_s,
    wall_s})."""
    from napari_neuroedge.models.checkpoint import load_checkpoint
    from napari_neuroedge.progress import drive
    from napari_neuroedge.training.loop import iter_fit

    c0, t0 = cpu_seconds(), time.perf_counter()
    result = drive(iter_fit(cfg, train_slices, [], run_dir, init=init, provenance={"name": run_dir.name}))
    info = {"steps": result.steps, "cpu_s": cpu_seconds() - c0, "wall_s": time.perf_counter() - t0}
    return load_checkpoint(result.last), info


def calibrate(ckpt: Any, train_slices: list[Any]) -> Any:
    """The checkpoint with its membrane / seed thresholds chosen on ``train_slices`` (6-way TTA) and its receptive
    context measured on two of them; no optimiser state."""
    from napari_neuroedge.config import TTAConfig
    from napari_neuroedge.inference.context import measure_context
    from napari_neuroedge.inference.pipeline import PredictionRequest, predict_probability
    from napari_neuroedge.inference.predict import TorchPredictor
    from napari_neuroedge.training.finetune import calibrate_thresholds
    from napari_neuroedge.training.loop import _IDENTITY_NORM

    model = ckpt.build()
    request = PredictionRequest(predictor=TorchPredictor(model, "cpu", tta=TTAConfig(n=6)), norm=_IDENTITY_NORM)
    probs = [predict_probability(s.image, request) for s in train_slices]
    threshold, seed, errors, rands = calibrate_thresholds(probs, train_slices, ckpt.seed_threshold)
    crop = min(256, min(train_slices[0].image.shape) // 2 // 8 * 8)
    context = measure_context(model, [s.image for s in train_slices[:2]], crop=crop)
    prov = {**ckpt.provenance, "calibration": {"on": "training slices, 6-way TTA", "pixel_error_by_threshold": errors,
                                               "rand_error_by_seed_threshold": rands}}
    return dataclasses.replace(ckpt, threshold=threshold, seed_threshold=seed, context=context, optimizer=None,
                               provenance=prov)


def inference_cost(model: Any) -> tuple[float, float]:
    """(CPU-seconds per Mpx of one 512^2 slice through the predictor, TTA off; GFLOP per Mpx of the model)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from napari_neuroedge.inference.predict import TorchPredictor

    predictor = TorchPredictor(model, "cpu")
    x = np.random.default_rng(0).normal(size=(1, 1, 512, 512)).astype(np.float32)
    predictor(x)  # warm-up
    c0 = cpu_seconds()
    for _ in range(2):
        predictor(x)
    s_per_mpx = (cpu_seconds() - c0) / 2 / (512 * 512 / 1e6)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.eval()(torch.from_numpy(x))
    return s_per_mpx, counter.get_total_flops() / 1e9 / (512 * 512 / 1e6)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import bench_correction_loop as loop
    import bench_default_model as dm
    import torch

    from napari_neuroedge.config import NormConfig, TTAConfig
    from napari_neuroedge.inference.precision import resolve_precision
    from napari_neuroedge.inference.predict import TorchPredictor, predict_array
    from napari_neuroedge.models.checkpoint import save_checkpoint
    from napari_neuroedge.training.dataset import load_isbi, slices_from_arrays

    clock = C.Stopwatch()
    C.set_threads(args.threads)
    C.print_header("bench_edge_models: CASENet and DFF vs the U-Net at equal CPU budget (issue 25)", "cpu",
                   args.quick)
    norm = NormConfig()
    cases: list[tuple[str, np.ndarray, np.ndarray, int]] = []
    if args.quick:
        from napari_neuroedge.io.sample import synthetic_em

        stack = synthetic_em((6, 96, 96), cell_size=24, seed=3)
        train_slices = slices_from_arrays(stack.image, stack.membrane, norm, range(4), "synthetic")
        cases.append(("synthetic", stack.image[4:], (stack.membrane[4:] > 0).astype(np.uint8), 6))
        data = "synthetic 6 x 96 x 96: train 0-3, evaluate 4-5"
    else:
        if not (dm.ISBI / "train-volume.tif").exists():
            print(f"ISBI 2012 data not found at {dm.ISBI}: nothing to measure")
            return 0
        train_slices = load_isbi(dm.ISBI, range(20), norm)
        cases.append(("isbi", *dm.isbi_sets(False)["isbi"], 6))
        if (loop.VNC / "stack1-raw.tif").exists():
            start, stop = (int(v) for v in args.vnc_slices.split(":"))
            for shift in ("vnc", "vnc-hard"):
                raw, lab = loop.load_shift(shift, False)
                cases.append((shift, raw[start:stop], lab[start:stop], 1))
        else:
            print(f"  VNC data not found at {loop.VNC}: the zero-shot figures are skipped")
        data = f"ISBI 2012 slices 0-19 (train), 20-24 (evaluate, 6-way TTA); VNC stack1 {args.vnc_slices} zero-shot"
    precision = resolve_precision("auto", "cpu")
    print(f"  data: {data}\n  budget: {args.minutes * 60:.0f} s of process CPU time per model, {args.threads} "
          f"thread(s), precision {precision}; models {', '.join(args.models)}", flush=True)

    save = Path(args.save) if args.save else None
    if save:
        save.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    rows = []
    for label in args.models:
        cfg = train_config(label, args.minutes, args.threads, args.quick)
        print(f"\n[{label}] {cfg.model} {cfg.model_kwargs}, lr {cfg.lr_backbone:g}/{cfg.lr_head:g}, loss "
              f"{MODELS[label][4]}", flush=True)
        init, pre_steps = None, 0
        if label in PRETRAINED:
            pre_s = args.pretrain_minutes * 60 * (0.25 / 8 if args.quick else 1.0)
            init, pre_steps = pretrain_mim(label, unlabelled_em(args.quick), pre_s, cfg.augment.crop, cfg.batch)
            cfg = dataclasses.replace(cfg, time_limit_s=cfg.time_limit_s - pre_s)
            print(f"  pretrained {pre_steps} MIM steps in {pre_s:.0f} CPU-s; labelled training gets the remaining "
                  f"{cfg.time_limit_s:.0f} CPU-s", flush=True)
        with tempfile.TemporaryDirectory(prefix="neuroedge-edge-") as tmp:
            ckpt, info = train(cfg, train_slices, Path(tmp) / label, init)
        info["pretrain_steps"] = pre_steps
        c0 = cpu_seconds()
        ckpt = calibrate(ckpt, train_slices)
        ckpt.provenance.update({"name": label, "command": "python benchmarks/" + " ".join(
            [Path(__file__).name, *sys.argv[1:]]), "budget_cpu_s": cfg.time_limit_s, "train_info": info})
        model = ckpt.build()
        n_params = sum(p.numel() for p in model.parameters())
        s_mpx, gflop_mpx = inference_cost(model)
        print(f"  {info['steps']} steps in {info['cpu_s']:.0f} CPU-s ({info['wall_s']:.0f} s wall); {n_params / 1e6:.2f} "
              f"M params; thresholds {ckpt.threshold:g} / seed {ckpt.seed_threshold:g}, context {ckpt.context} px "
              f"(calibration {cpu_seconds() - c0:.0f} CPU-s); inference {s_mpx:.2f} CPU-s/Mpx, {gflop_mpx:.0f} "
              f"GFLOP/Mpx  ({clock() / 60:.1f} min elapsed)", flush=True)
        scores = {}
        for case, raw, lab, tta in cases:
            prob = predict_array(raw, TorchPredictor(model, "cpu", tta=TTAConfig(n=tta)), norm=ckpt.norm)
            m = dm.measure(prob, lab, ckpt)
            scores[case] = m
            print(f"  {case:9s} TTA {tta}: " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()), flush=True)
            rows.append([label, case, str(tta), *(f"{m[k]:.4f}" for k in m), str(info["steps"]), f"{s_mpx:.2f}",
                         f"{gflop_mpx:.0f}"])
        results[label] = {"scores": scores, "info": info, "params": n_params}
        if save:
            out = save / f"{label}.pt"
            if out.exists():
                out = save / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}.pt"
            save_checkpoint(ckpt, out)
            print(f"  saved {out}", flush=True)
        torch.set_num_threads(args.threads)  # the loop may have changed it

    ref = results[REFERENCE]["scores"] if REFERENCE in results else None
    print("\n[compare] edge model / U-Net (pixel and Rand error: < 1 = edge model better; F1: > 1 = better)")
    for label in (m for m in args.models if m != REFERENCE and ref is not None):
        for case, m in results[label]["scores"].items():
            r = m["f1_2px"] / ref[case]["f1_2px"] if ref[case]["f1_2px"] else float("nan")
            note = C.target_note(r, ">=", 0.9, "within 10%: ") if case in ("isbi", "synthetic") else \
                ("ahead" if r > 1 else "not ahead") + " on zero-shot transfer"
            C.ratio_line(f"{label}_over_unet_f1_2px_{case}", r, note)
            C.ratio_line(f"{label}_over_unet_rand_{case}", m["rand"] / max(ref[case]["rand"], 1e-9), "lower = better")
        C.ratio_line(f"{label}_over_unet_steps", results[label]["info"]["steps"] /
                     max(results[REFERENCE]["info"]["steps"], 1), "same CPU budget")
    C.print_readme_table(["model", "data", "TTA", "pixel error", "F1 (2 px)", "F1 exact", "Rand error", "VI merge",
                          "steps", "inference CPU-s/Mpx", "GFLOP/Mpx"], rows,
                         f"{data}; each model trained from scratch for {args.minutes * 60:.0f} s of process CPU time "
                         f"(the -mim models: {args.pretrain_minutes * 60:.0f} s of it pretraining without labels) "
                         f"on {args.threads} thread(s), {precision} (`python benchmarks/bench_edge_models.py "
                         f"--minutes {args.minutes:g} --threads {args.threads}`).")
    print(f"\n(total {clock() / 60:.1f} min wall, {cpu_seconds() / 60:.1f} CPU-min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
