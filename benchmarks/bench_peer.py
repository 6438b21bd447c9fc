"""Peer benchmark: our default recipe vs segmentation_models_pytorch's Unet("resnet18"), same data, same CPU time.

The peer our default model must beat: ``smp.Unet("resnet18", encoder_weights=None)`` trained on the same slices
for the same CPU time, compared on the same validation slices in one run. Both are trained by our loop
(:func:`iter_fit`) with the SAME :class:`TrainConfig` (our from-scratch recipe: the first stage of the
default model's training, see :func:`recipe`) except the model: same crops in the same order (same seed), same loss,
augmentation, learning rates and schedule, the same budget of process CPU time (``time_clock="cpu"``, fixed
threads), no validation during training (the final weights are evaluated). Evaluation on ISBI 2012 slices 20-24
(training on 0-19) with :func:`metrics.evaluate`: pixel error, boundary F1 at 2 px and adapted Rand error of the
watershed instances (:func:`instances_from_probability`), without and with 6-way TTA.

Usage: ``python benchmarks/bench_peer.py [--minutes 5] [--threads 2] [--data DIR] [--loss ..] [--lr ..]``: the full run takes about
2 x (minutes / threads) of wall time for training plus 2-3 minutes of evaluation. ``--quick`` uses a synthetic
stack and ~20 s of CPU per model. Needs ``segmentation-models-pytorch`` (a benchmark-only dependency).
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
import torch
import torch.nn.functional as F
from torch import nn

import _common as C

PEER = "smp_unet_resnet18"
METRICS = (("pixel_error", "pixel error", "lower"), ("boundary_f1", "boundary F1 (2 px)", "higher"),
           ("rand_error", "adapted Rand error", "lower"))


class SmpUnetResNet18(nn.Module):
    """smp.Unet("resnet18", no pretrained weights, 1 channel in, 1 logit out) in our model interface.

    Input (N, 1, H, W), any H, W (reflect-padded to a multiple of 32 and cropped back); output (N, 1, H, W)
    logits; ``param_groups`` splits encoder ("backbone") from decoder + head ("head") like our U-Net.
    """

    multiple = 32

    def __init__(self) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.net = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if (ph < h and pw < w) else "replicate")
        return self.net(x)[..., :h, :w]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        backbone = list(self.net.encoder.parameters())
        ids = {id(p) for p in backbone}
        return {"backbone": backbone, "head": [p for p in self.parameters() if id(p) not in ids]}


def find_isbi(explicit: str | None) -> Path | None:
    """The ISBI 2012 folder: ``--data``, else ../shared/data/isbi2012 beside the repo, else /work/shared/..."""
    candidates = [Path(explicit)] if explicit else [C.REPO.parent / "shared" / "data" / "isbi2012",
                                                    Path("/work/shared/data/isbi2012")]
    return next((p for p in candidates if (p / "train-volume.tif").exists()), None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="synthetic data, ~20 s of CPU per model (smoke test)")
    p.add_argument("--minutes", type=float, help="CPU minutes of training per model (default 5; quick 0.33)")
    p.add_argument("--threads", type=int, default=2, help="torch threads, fixed for both (default 2)")
    p.add_argument("--device", default="cpu", help="cpu (default; the budget is process CPU time)")
    p.add_argument("--data", help="ISBI 2012 folder (default: ../shared/data/isbi2012 next to the repo)")
    p.add_argument("--loss", help="loss term weights for both models, e.g. bce=1,skeleton_recall=0.5")
    p.add_argument("--lr", type=float, help="learning rate for both models (default 1e-3)")
    p.add_argument("--ema", type=float, help="weight moving-average decay for both models (default off)")
    args = p.parse_args(argv)
    args.minutes = args.minutes if args.minutes is not None else (1 / 3 if args.quick else 5.0)
    return args


def recipe(loss: str | None = None, lr: float | None = None, ema: float | None = None) -> tuple[Any, str]:
    """Our from-scratch recipe: the first stage of the bundled default model's training (its model card),
    with optional ``--loss`` / ``--lr`` / ``--ema`` overrides. Later stages fine-tune from it, so they are not
    a from-scratch recipe to compare."""
    from napari_neuroedge.config import AugmentConfig, LossConfig, TrainConfig, parse_loss

    cfg = TrainConfig(model="unet", lr_backbone=1e-3, lr_head=1e-3, batch=4, augment=AugmentConfig(crop=256),
                      loss=LossConfig(f1=0.5, focal=0.5, skeleton_recall=0.25))
    source = "the default model's from-scratch stage"
    if loss:
        cfg, source = dataclasses.replace(cfg, loss=parse_loss(loss, cfg.loss)), source + f", --loss {loss}"
    if lr:
        cfg, source = dataclasses.replace(cfg, lr_backbone=lr, lr_head=lr), source + f", --lr {lr}"
    if ema:
        cfg, source = dataclasses.replace(cfg, ema_decay=ema), source + f", --ema {ema}"
    return cfg, source


def train_one(cfg: Any, train: list[Any]) -> tuple[nn.Module, dict[str, float]]:
    """Train per ``cfg`` (no validation); the final model and its steps / throughput."""
    from napari_neuroedge.models.checkpoint import load_checkpoint
    from napari_neuroedge.progress import drive
    from napari_neuroedge.training.loop import iter_fit

    with tempfile.TemporaryDirectory(prefix="neuroedge-peer-") as run_dir:
        c0 = time.process_time()
        result = drive(iter_fit(cfg, train, [], run_dir))
        cpu = time.process_time() - c0
        model = load_checkpoint(result.last).build()
    wall = float(result.history[-1]["elapsed_s"]) if result.history else float("nan")
    crops = result.steps * cfg.batch
    return model, {"steps": result.steps, "crops": crops, "wall_s": wall, "crops_per_s": crops / wall,
                   "crops_per_cpu_s": crops / cfg.time_limit_s, "cpu_total_s": cpu}


def evaluate_model(model: nn.Module, images: np.ndarray, gt: np.ndarray, cfg: Any, device: str,
                   tta: int) -> dict[str, float]:
    """metrics.evaluate of the model's tiled prediction of the (already normalised) validation stack."""
    from napari_neuroedge.config import NormConfig, TileConfig, TTAConfig
    from napari_neuroedge.inference.postprocess import instances_from_probability
    from napari_neuroedge.inference.predict import TorchPredictor, predict_array
    from napari_neuroedge.metrics import evaluate

    predictor = TorchPredictor(model, device, amp=False, tta=TTAConfig(n=tta))
    identity = NormConfig(mode="meanstd", mean=0.0, std=1.0)  # the slices are normalised already (float32)
    prob = predict_array(images, predictor, tile=TileConfig(tile=cfg.val_tile, batch=4), norm=identity)
    return evaluate(prob, gt, instances_fn=instances_from_probability)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clock = C.Stopwatch()
    C.set_threads(args.threads)
    C.print_header("bench_peer: our default recipe vs smp Unet(resnet18), same data and CPU time", args.device,
                   args.quick)
    try:
        import segmentation_models_pytorch  # noqa: F401
    except ImportError:
        print("segmentation-models-pytorch is not installed: nothing to compare (pip install "
              "segmentation-models-pytorch)")
        return 0
    from napari_neuroedge.config import LOSS_TERMS
    from napari_neuroedge.models import registry
    from napari_neuroedge.training.dataset import load_isbi, slices_from_arrays

    base, source = recipe(args.loss, args.lr, args.ema)
    cfg = dataclasses.replace(base, steps=10**9, val_every=10**9, time_limit_s=args.minutes * 60, time_clock="cpu",
                              threads=args.threads, device=args.device)
    if args.quick:
        from napari_neuroedge.io.sample import synthetic_em

        cfg = dataclasses.replace(cfg, batch=min(cfg.batch, 2), augment=dataclasses.replace(cfg.augment, crop=64))
        stack = synthetic_em((25, 96, 96), cell_size=24, seed=3)
        train = slices_from_arrays(stack.image, stack.membrane, cfg.norm, range(20), "synthetic")
        val = slices_from_arrays(stack.image, stack.membrane, cfg.norm, range(20, 25), "synthetic")
        data = "synthetic EM stack 25 x 96 x 96 (--quick: crop 64, batch <= 2)"
    else:
        root = find_isbi(args.data)
        if root is None:
            print("ISBI 2012 data not found (looked for ../shared/data/isbi2012 next to the repo and "
                  "/work/shared/data/isbi2012; pass --data DIR): skipped")
            return 0
        train = load_isbi(root, range(20), cfg.norm)
        val = load_isbi(root, range(20, 25), cfg.norm)
        data = f"ISBI 2012 {root}: train slices 0-19, evaluate slices 20-24"
    terms = {k: v for k, v in dataclasses.asdict(cfg.loss).items() if k in LOSS_TERMS and v}
    print(f"  recipe: {source}: model {cfg.model} {cfg.model_kwargs}, lr {cfg.lr_backbone}/{cfg.lr_head}, batch "
          f"{cfg.batch}, crop {cfg.augment.crop}, loss {terms}, seed {cfg.seed}")
    print(f"  data: {data}; budget {cfg.time_limit_s:.0f} s of process CPU time per model, {args.threads} threads",
          flush=True)

    images = np.stack([s.image for s in val])
    gt = np.stack([s.label for s in val])
    registry.ARCHITECTURES[PEER] = SmpUnetResNet18  # temporary registration, removed below
    try:
        runs = {"ours": cfg, "smp peer": dataclasses.replace(cfg, model=PEER, model_kwargs={})}
        results: dict[str, dict[str, Any]] = {}
        for name, run_cfg in runs.items():
            print(f"\n[train] {name}: {run_cfg.model}", flush=True)
            model, info = train_one(run_cfg, train)
            n_params = sum(p.numel() for p in model.parameters())
            print(f"  {info['steps']} steps, {info['crops']} crops in {info['wall_s']:.0f} s wall: "
                  f"{info['crops_per_s']:.2f} crops/s, {info['crops_per_cpu_s']:.3f} crops per CPU-s; "
                  f"{n_params / 1e6:.2f} M parameters", flush=True)
            scores = {}
            for tta in (1, 6):
                scores[tta] = evaluate_model(model, images, gt, run_cfg, args.device, tta)
                print(f"  TTA {tta}: " + ", ".join(f"{label} {scores[tta][key]:.4f}" for key, label, _ in METRICS),
                      flush=True)
            results[name] = {"info": info, "scores": scores, "params": n_params}
    finally:
        registry.ARCHITECTURES.pop(PEER, None)

    print("\n[compare] ours / peer (pixel and Rand error: < 1 = ours better; boundary F1: > 1 = ours better)")
    ours, peer = results["ours"], results["smp peer"]
    wins = 0
    for tta in (1, 6):
        for key, _, better in METRICS:
            a, b = ours["scores"][tta][key], peer["scores"][tta][key]
            r = a / b if b else float("inf")
            won = a < b if better == "lower" else a > b
            wins += int(won and tta == 6)
            C.ratio_line(f"ours_over_peer_{key}_tta{tta}", r,
                         f"{better} is better; ours {'better' if won else 'not better'}")
    C.ratio_line("ours_over_peer_steps", ours["info"]["steps"] / max(peer["info"]["steps"], 1), "same CPU time")
    C.ratio_line("ours_over_peer_crops_per_s", ours["info"]["crops_per_s"] / peer["info"]["crops_per_s"], "wall clock")
    print(f"  with 6-way TTA ours beats the peer on {wins} of {len(METRICS)} metrics")

    rows = []
    for name, res in results.items():
        for tta in (1, 6):
            s = res["scores"][tta]
            rows.append([name if name == "ours" else "smp Unet(resnet18)", tta, f"{s['pixel_error']:.4f}",
                         f"{s['boundary_f1']:.4f}", f"{s['rand_error']:.4f}", res["info"]["steps"],
                         f"{res['info']['crops_per_s']:.2f}", f"{res['params'] / 1e6:.1f} M"])
    C.print_readme_table(["model", "TTA", "pixel error", "boundary F1 (2 px)", "adapted Rand error", "steps",
                          "crops/s", "params"], rows,
                         f"{data}; each model trained by the same loop and recipe for {cfg.time_limit_s:.0f} s "
                         f"of process CPU time ({args.threads} threads) (`python benchmarks/bench_peer.py`).")
    print(f"\n(total {clock() / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
