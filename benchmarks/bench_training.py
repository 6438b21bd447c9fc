"""Training benchmark (issue 3): throughput per model, loss-term overhead, edge-detector inference cost.

All in one run on this device, printed as ratios:

1. training throughput of the real loop (:func:`iter_fit`: crop sampling + augmentation in the loader, forward,
   combined loss, backward, Adam step) per model: ``unet``, ``unet-large``, CASENet on ResNet-18 and -50 and DFF
   on ResNet-50. The ResNet edge detectors keep output stride 8 with a stride-1 conv1, so they are trained on
   smaller crops here (--quick: all tiny); crops/s and megapixels/s are given, ratios to U-Net in Mpx/s;
2. Skeleton Recall and edge-loss overhead vs plain BCE: U-Net, same crops, time per full training step (the
   tube / band maps are cut and augmented with every crop in the loader); their per-slice precomputation
   (skeletonise + dilate, once per slice when the sampler starts) is timed separately;
3. inference cost per megapixel of CASENet / DFF vs U-Net (eval mode, batches of 256^2 tiles).

Usage: ``python benchmarks/bench_training.py [--quick] [--threads 2] [--device auto]``; the full run takes about
4 minutes on 2 idle CPU cores; ``--quick`` uses tiny crops (< 1 minute).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import _common as C

# (label, preset or architecture, kwargs, crop in full mode, crop in --quick mode)
MODELS: list[tuple[str, str, dict[str, Any], int, int]] = [
    ("unet", "unet", {}, 256, 64),
    ("unet-large", "unet-large", {}, 256, 64),
    ("casenet-18", "casenet", {"depth": 18}, 128, 32),
    ("casenet-50", "casenet", {"depth": 50}, 64, 32),
    ("dff-50", "dff", {"depth": 50}, 64, 32),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny crops and few steps, < 1 minute (smoke test)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2; 0 = torch's default)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    p.add_argument("--batch", type=int, help="crops per step (default 4; quick 2)")
    p.add_argument("--steps", type=int, help="timed steps per run, after one warm-up step (default 4; quick 1)")
    p.add_argument("--rounds", type=int, help="interleaved rounds of the loss comparison (default 2; quick 1)")
    p.add_argument("--models", default=",".join(m[0] for m in MODELS),
                   help="comma-separated subset of: %(default)s (unet is always run: it is the reference)")
    args = p.parse_args(argv)
    wanted = {"unet", *(m.strip() for m in args.models.split(",") if m.strip())}
    unknown = wanted - {m[0] for m in MODELS}
    if unknown:
        p.error(f"unknown model(s) {sorted(unknown)}")
    args.models = [m for m in MODELS if m[0] in wanted]
    args.batch = args.batch or (2 if args.quick else 4)
    args.steps = args.steps or (1 if args.quick else 4)
    args.rounds = args.rounds or (1 if args.quick else 2)
    return args


@dataclass
class StepTimes:
    """Seconds per training step (warm-up excluded)."""

    times: list[float]
    batch: int
    crop: int

    @property
    def step_s(self) -> float:
        return float(statistics.median(self.times))

    @property
    def crops_per_s(self) -> float:
        return self.batch / self.step_s

    @property
    def mpx_per_s(self) -> float:
        return self.crops_per_s * self.crop**2 / 1e6


def time_training(cfg: Any, train: list[Any], warmup: int = 1) -> list[float]:
    """Run ``iter_fit`` for ``cfg.steps`` steps (no validation); seconds of each step after ``warmup``."""
    from napari_neuroedge.training.loop import iter_fit

    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="neuroedge-bench-") as run_dir:
        job = iter_fit(cfg, train, [], run_dir)
        t_prev = time.perf_counter()
        for event in job:  # the generator's final checkpoint save happens after the last yield: not timed
            now = time.perf_counter()
            if event.done > warmup:
                times.append(now - t_prev)
            t_prev = now
    return times


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    from napari_neuroedge.config import AugmentConfig, LossConfig, NormConfig, TrainConfig
    from napari_neuroedge.inference.device import resolve_device
    from napari_neuroedge.models.registry import build_model
    from napari_neuroedge.io.sample import synthetic_em
    from napari_neuroedge.training.dataset import slices_from_arrays
    from napari_neuroedge.training.loop import CropSampler

    clock = C.Stopwatch()
    C.set_threads(args.threads)
    device = str(resolve_device(args.device))
    C.print_header("bench_training: training throughput, loss overhead, edge-detector cost (issue 3)", device,
                   args.quick)
    size = 128 if args.quick else 512
    stack = synthetic_em((4, size, size), cell_size=40, seed=0)
    train = slices_from_arrays(stack.image, stack.membrane, NormConfig())
    steps = 1 + args.steps
    print(f"  data: 4 synthetic EM slices of {size}^2; batch {args.batch}; 1 warm-up + {args.steps} timed steps "
          "per run (median); default loss 0.5 F1 + 0.5 focal; no validation", flush=True)

    def config(model: str, kwargs: dict[str, Any], crop: int, loss: LossConfig) -> TrainConfig:
        return TrainConfig(model=model, model_kwargs=kwargs, batch=args.batch, steps=steps, val_every=10**9,
                           threads=args.threads, device=args.device, augment=AugmentConfig(crop=crop), loss=loss)

    # untimed warm-up of the process (lazy imports, allocator, kernels) so the first, reference model pays none
    time_training(dataclasses.replace(config("unet", {}, 64, LossConfig()), steps=2), train)

    # ---- 1: throughput per model
    print("\n[1] training throughput per model", flush=True)
    through: dict[str, StepTimes] = {}
    for label, model, kwargs, crop_full, crop_quick in args.models:
        crop = crop_quick if args.quick else crop_full
        st = StepTimes(time_training(config(model, kwargs, crop, LossConfig()), train), args.batch, crop)
        through[label] = st
        print(f"  {label:11s} crop {crop:3d}: {st.step_s:7.3f} s/step, {st.crops_per_s:7.2f} crops/s, "
              f"{st.mpx_per_s:6.3f} Mpx/s  ({clock():.0f} s elapsed)", flush=True)
    ref = through["unet"]
    for label in through:
        if label != "unet":
            C.ratio_line(f"train_mpx_per_s_{label}_over_unet", through[label].mpx_per_s / ref.mpx_per_s,
                         "higher = faster")

    # ---- 2: loss overhead
    crop = 64 if args.quick else 256
    losses = {
        "bce": LossConfig(f1=0, focal=0, bce=1),
        "bce+skeleton_recall": LossConfig(f1=0, focal=0, bce=1, skeleton_recall=1),
        "edge": LossConfig(f1=0, focal=0, edge=1),
        "f1+focal+skeleton_recall": LossConfig(f1=0.5, focal=0.5, skeleton_recall=0.25),
    }
    print(f"\n[2] loss overhead: U-Net, crop {crop}, {args.rounds} interleaved round(s)", flush=True)
    per_loss: dict[str, list[float]] = {k: [] for k in losses}
    setup: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, loss in losses.items():
            cfg = config("unet", {}, crop, loss)
            t0 = time.perf_counter()
            CropSampler(train, cfg)  # per-slice target maps (tube / band), as iter_fit builds them at start
            setup[name] = min(setup.get(name, float("inf")), time.perf_counter() - t0)
            per_loss[name] += time_training(cfg, train)
    base = statistics.median(per_loss["bce"])
    for name, times in per_loss.items():
        step = statistics.median(times)
        per_slice_ms = setup[name] / len(train) * 1e3
        print(f"  {name:25s} {step:7.3f} s/step (median of {len(times)}); slice maps {per_slice_ms:6.1f} ms per "
              f"{size}^2 slice, once")
    r_skel = statistics.median(per_loss["bce+skeleton_recall"]) / base
    r_edge = statistics.median(per_loss["edge"]) / base
    r_rec = statistics.median(per_loss["f1+focal+skeleton_recall"]) / base
    C.ratio_line("step_bce_skeleton_recall_over_bce", r_skel, "paper: a few percent overhead")
    C.ratio_line("step_edge_over_bce", r_edge, "paper: a few percent overhead")
    C.ratio_line("step_default_recipe_over_bce", r_rec, "f1 + focal + skeleton recall")

    # ---- 3: inference cost per megapixel
    tile = 64 if args.quick else 256
    print(f"\n[3] inference cost per megapixel: batches of 2 x {tile}^2, eval mode", flush=True)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 1, tile, tile)).astype(np.float32)).to(device)
    nets = {label: build_model(model, **kwargs).to(device).eval() for label, model, kwargs, _, _ in args.models}

    def forward(net: torch.nn.Module) -> Any:
        def run() -> None:
            with torch.inference_mode():
                net(x)
        return run

    inf = C.interleaved({k: forward(n) for k, n in nets.items()}, 1 if args.quick else 3, warmup=1, device=device)
    mpx = 2 * tile * tile / 1e6
    s_per_mpx = {k: t.median / mpx for k, t in inf.items()}
    for k, v in s_per_mpx.items():
        print(f"  {k:11s} {v:8.3f} s/Mpx  ({inf[k]})")
    for k in (k for k in s_per_mpx if k != "unet"):
        C.ratio_line(f"infer_s_per_mpx_{k}_over_unet", s_per_mpx[k] / s_per_mpx["unet"], "cost; lower = cheaper")

    rows = [[k, str(st.crop), f"{st.crops_per_s:.2f}", f"{st.mpx_per_s:.3f}", f"{st.mpx_per_s / ref.mpx_per_s:.2f}",
             f"{s_per_mpx[k]:.2f}", f"{s_per_mpx[k] / s_per_mpx['unet']:.2f}"] for k, st in through.items()]
    C.print_readme_table(["model", "train crop", "crops/s", "train Mpx/s", "vs U-Net", "inference s/Mpx",
                          "vs U-Net"], rows,
                         f"Training (batch {args.batch}, real loop with augmentation) and inference on {device}, "
                         f"{torch.get_num_threads()} threads (`python benchmarks/bench_training.py`).")
    print()
    print(C.markdown_table(["loss (U-Net, crop %d)" % crop, "time per step vs plain BCE"],
                           [["BCE + Skeleton Recall", f"{r_skel:.3f}"], ["edge loss", f"{r_edge:.3f}"],
                            ["0.5 F1 + 0.5 focal + 0.25 Skeleton Recall", f"{r_rec:.3f}"]]))
    print(f"\n(total {clock() / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
