"""Correction-loop benchmark (issues 11 and 23): does one click of Fine-tune make the model better on EM of a kind
it was never tuned on, and never worse?

Protocol. Five shifts built from ``../shared/data/vnc/`` stack1 (another animal, microscope and contrast than the
ISBI 2012 slices the default model was trained on); on each, ``--repeats`` random choices (seeded) of the two
"corrected" slices from the slices not evaluated (their hand labels stand in for the user's corrections; the
pixels where they differ from the starting model's membranes are marked changed, as brushing marks them: the
corrected-pixel weight and the guard's figures near changes act on them; ``--changed none`` drops the mark), the
one-click service (``FinetuneOptions()``: what the button and ``neuroedge finetune`` run, guard included),
evaluated on 5 other slices (10-14): pixel error, boundary F1 exact and at 2 px, Rand error and VI of the
watershed instances and of the thresholded membranes, before (zero-shot) and after, whether the guard kept the
parent, and the fine-tune's wall time. The table shows the mean and the spread (min-max) over the repeats.

Shifts: ``vnc`` (as it is: 4.6 nm pixels, 1 = membrane, about 20% membrane); ``vnc-hard`` (pixels binned 2x2 to
9.2 nm, gamma 1.6 and contrast x 0.6, labels skeletonised and redrawn 3 px wide); ``fibsem`` (FIB-SEM-like:
binned 1.75x to about 8 nm, 280 x 280 px slices, another contrast (brighter, x 0.7) and shot-like noise, thin
labels drawn 2 px wide from the instance boundaries, one px on each side of every neuron-to-neuron contact);
``vnc-fine`` (2x smaller pixels: 2.3 nm, 512 x 512 px crops upsampled 2x, so membranes twice as many px wide);
``vnc-inverted`` (inverted staining at half the contrast: bright membranes); ``synthetic`` (no data needed, for the
smoke test).

Leave-one-shift-out. ``--grid NAME=V1,V2,...`` runs every value of one FinetuneOptions field (repeated, every
combination of several fields: ``--grid lr=2e-4,5e-4 --grid crop=128,256``); for each shift the value is chosen
on the *other* shifts (lowest mean ratio of Rand error after / zero-shot; the first listed value breaks a tie)
and the left-out shift is reported at that value. Without ``--grid`` the one-click defaults are the
only choice. The instance seed rule is chosen the same way: the current rule (the interior's connected
components at the model's calibrated seed threshold) against distance-transform seeds
(:func:`~napari_neuroedge.inference.postprocess.instances_from_distance`) with their boundary threshold and h
chosen on the other shifts; both are measured on the same probabilities, zero-shot and fine-tuned.

The peer: ``smp.Unet("resnet18", encoder_weights=None)`` (no weights are downloaded). ``--peer isbi`` (default)
trains it from scratch on ISBI 2012 slices 0-19 with our from-scratch recipe (``bench_peer.recipe``) for
``--peer-pretrain-minutes`` of wall time on the same threads, then calibrates its thresholds on those slices;
the result is cached (``--peer-cache``). ``--peer scratch`` starts it from random weights; ``--peer none`` skips
it. Both models are then fine-tuned by the same service with the same options, slices, seed and time limit (the
peer gets our parent's fine-tune loss); the benchmark prints how their TrainConfigs differ.

Usage: ``python benchmarks/bench_correction_loop.py [--parent default] [--shifts vnc,vnc-hard,fibsem,vnc-fine,
vnc-inverted] [--repeats 3] [--time-limit 90] [--grid lr=1e-4,2e-4] [--peer isbi] [--peer-pretrain-minutes 45]
[--quick]``; ``--parent`` fine-tunes another bundled model or checkpoint (e.g. ``casenet-r18``, ``dff-r18``:
issue 25) in place of the default.

Load and speed. ``--steps N`` fixes every fine-tune's step budget (the clock off), so the figures do not depend on
how busy the machine is; ``--jobs N`` runs the fine-tunes in N worker processes (``--threads`` each, the peer's
pretraining in the main one); ``--device cuda`` with ``--steps`` gives the CPU recipe's numbers faster on a GPU
machine (``gpu_correction_loop.sh``). ``--results FILE`` appends every finished task as a JSON line, and
``--report-from FILE`` prints the tables of such a file (of a run cut short, too).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import _common as C

VNC = Path(__file__).resolve().parents[2] / "shared" / "data" / "vnc"


SHIFTS = ("vnc", "vnc-hard", "fibsem", "vnc-fine", "vnc-inverted")
#: Distance-transform seed rule parameters tried (boundary threshold, h in px), chosen leave-one-shift-out.
DIST_GRID = tuple((t, h) for t in (0.5, 0.7) for h in (1.0, 2.0))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shifts", default=",".join(SHIFTS))
    p.add_argument("--repeats", type=int, default=3, help="random choices of the two corrected slices per shift")
    p.add_argument("--pool", default="0-9,15-19", help="slices the corrected pairs are drawn from")
    p.add_argument("--parent", default="default", help="the model fine-tuned: a bundled name (default: default, "
                   "e.g. casenet-r18 or dff-r18) or a checkpoint path")
    p.add_argument("--eval-slices", default="10,11,12,13,14", help="evaluated slices (default 10-14)")
    p.add_argument("--time-limit", type=float, help="override the one-click time limit (s)")
    p.add_argument("--crop", type=int, help="use only the top-left CROP x CROP px of every shift's slices")
    p.add_argument("--grid", action="append", help="NAME=V1,V2,...: a FinetuneOptions field chosen "
                   "leave-one-shift-out; repeat it to choose several fields at once (every combination is run)")
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
    p.add_argument("--device", default="cpu", help="where the fine-tunes and predictions run (cpu, cuda); off the "
                   "CPU give --steps, so each fine-tune does what 2 CPU cores do in the one-click time limit")
    p.add_argument("--steps", type=int, help="a fixed step budget for every fine-tune instead of the clock "
                   "(time limit off), e.g. 200: what the one-click recipe does in 90 s on 2 CPU cores")
    p.add_argument("--jobs", type=int, default=1, help="run the fine-tunes in this many processes (--threads each)")
    p.add_argument("--peer-pretrain-steps", type=int, help="pretrain the peer for this many steps (on --device) "
                   "instead of --peer-pretrain-minutes of wall time")
    p.add_argument("--peer-repeats", type=int, help="pairs the peer is fine-tuned on per shift (default: --repeats; "
                   "the first ones of ours)")
    p.add_argument("--no-seed-rules", action="store_true", help="skip the distance-transform seed rule's figures "
                   "(four more instance maps per evaluated slice)")
    p.add_argument("--results", help="append every finished fine-tune here as a JSON line (read by --report-from)")
    p.add_argument("--report-from", help="print the tables of a --results file; runs nothing")
    p.add_argument("--changed", choices=("parent", "none"), default="parent",
                   help="which pixels of the corrected slices count as the user's changes: those whose label "
                   "differs from the starting model's membranes (default: what brushing its prediction into the "
                   "labels changes), or none (no change mask: the corrected-pixel weight and the held-out figures "
                   "near changes do nothing, as in the runs before 2026-12-05)")
    return p.parse_args(argv)


def _binned(raw: np.ndarray, lab: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """(raw, labels) resampled by 1 / ``factor`` (linear for raw, max-pooled-like nearest for labels)."""
    from scipy.ndimage import zoom

    r = np.stack([zoom(s.astype(np.float32), 1 / factor, order=1) for s in raw])
    m = np.stack([zoom(s, 1 / factor, order=0) for s in lab])
    return r, m


def load_shift(name: str, quick: bool) -> tuple[np.ndarray, np.ndarray]:
    """(z, y, x) uint8 raw and uint8 membrane labels (1 = membrane) of one shift (see the module docstring)."""
    import tifffile
    from skimage.morphology import dilation, skeletonize
    from skimage.segmentation import expand_labels, find_boundaries

    if name == "synthetic":
        from napari_neuroedge.io.sample import synthetic_em

        stack = synthetic_em((20, 96, 96) if quick else (20, 512, 512), cell_size=24, seed=7)
        return stack.image, (stack.membrane > 0).astype(np.uint8)
    raw = tifffile.imread(VNC / "stack1-raw.tif")
    lab = (tifffile.imread(VNC / "stack1-membranes.tif") > 0).astype(np.uint8)
    if quick:
        raw, lab = raw[:, :256, :256], lab[:, :256, :256]
    z, h, w = raw.shape
    rng = np.random.default_rng(23)
    if name == "vnc":
        return raw, lab
    if name == "vnc-hard":
        binned = raw[:, : h // 2 * 2, : w // 2 * 2].reshape(z, h // 2, 2, w // 2, 2).astype(np.float32).mean((2, 4))
        faint = 255.0 * (binned / 255.0) ** 1.6
        faint = (faint - faint.mean()) * 0.6 + faint.mean()
        lab2 = lab[:, : h // 2 * 2, : w // 2 * 2].reshape(z, h // 2, 2, w // 2, 2).max((2, 4))
        thin = np.stack([dilation(skeletonize(s > 0), np.ones((3, 3), bool)) for s in lab2]).astype(np.uint8)
        return np.clip(faint, 0, 255).astype(np.uint8), thin
    if name == "fibsem":
        from napari_neuroedge.metrics import instances_from_membrane

        side = 160 if quick else 280
        r, m = _binned(raw[:, : int(side * 1.75), : int(side * 1.75)], lab[:, : int(side * 1.75), : int(side * 1.75)],
                       1.75)
        r, m = r[:, :side, :side], m[:, :side, :side]
        cells = np.stack([expand_labels(instances_from_membrane(s), 10) for s in m])
        thin = np.stack([find_boundaries(c, mode="inner") for c in cells]).astype(np.uint8)  # 1 px each side
        bright = (r - r.mean()) * 0.7 + 150.0
        noisy = rng.poisson(np.clip(bright, 0, 255) / 4.0) * 4.0 + rng.normal(0, 6.0, bright.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8), thin
    if name == "vnc-fine":
        from scipy.ndimage import zoom

        c = 128 if quick else 256
        r = np.stack([zoom(s[:c, :c].astype(np.float32), 2, order=1) for s in raw])
        m = np.stack([zoom(s[:c, :c], 2, order=0) for s in lab])
        return np.clip(r, 0, 255).astype(np.uint8), m.astype(np.uint8)
    if name == "vnc-inverted":
        inv = 255.0 - raw.astype(np.float32)
        return np.clip((inv - inv.mean()) * 0.5 + inv.mean(), 0, 255).astype(np.uint8), lab
    raise SystemExit(f"unknown shift {name!r}")


def measure(prob: np.ndarray, gt: np.ndarray, ckpt: Any, seed_rules: bool = True) -> dict[str, float]:
    """The metrics of a probability stack at the model's membrane threshold; instances from the watershed at the
    model's seed threshold and from the thresholded membranes; and the Rand error of the distance-transform seed
    rule at each of :data:`DIST_GRID` (``rand_dist_T_H``)."""
    from functools import partial

    from napari_neuroedge.inference.postprocess import instances_from_distance, instances_from_probability
    from napari_neuroedge.metrics import evaluate, instances_from_membrane, rand_error

    inst = evaluate(prob, gt, instances_fn=partial(instances_from_probability, seed_threshold=ckpt.seed_threshold),
                    threshold=ckpt.threshold)
    mem = evaluate((prob >= ckpt.threshold).astype(np.uint8), gt)
    out = {"pixel": inst["pixel_error"], "f1_exact": inst["boundary_f1_exact"], "f1_2px": inst["boundary_f1"],
           "rand": inst["rand_error"], "vi_split": inst["vi_split"], "vi_merge": inst["vi_merge"],
           "rand_mem": mem["rand_error"], "vi_mem": mem["vi_total"]}
    if not seed_rules:
        return out
    truth = instances_from_membrane(gt)
    for t, h in DIST_GRID:
        cells = np.stack([instances_from_distance(p, t, h=h) for p in prob])
        out[f"rand_dist_{t:g}_{h:g}"] = rand_error(cells, truth)
    return out


def loso_choice(scores: dict[str, dict[Any, float]], left_out: str) -> Any:
    """The choice (key of the inner dicts) with the lowest mean score over the shifts other than ``left_out``
    (the first choice where there is no other shift)."""
    others = [s for s in scores if s != left_out]
    choices = list(next(iter(scores.values())))
    if not others:
        return choices[0]
    return min(choices, key=lambda c: (float(np.mean([scores[s][c] for s in others])), choices.index(c)))


def spread(values: list[float]) -> str:
    """``mean (min-max)`` of a few repeats."""
    v = np.asarray(values, float)
    return f"{v.mean():.4f}" if len(v) == 1 else f"{v.mean():.4f} ({v.min():.4f}-{v.max():.4f})"


def parse_slices(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b) + 1) if b else [int(a)])
    return out


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
    budget = f"{args.peer_pretrain_steps} steps" if args.peer_pretrain_steps else f"{minutes:g} min"
    path = cache / f"{bench_peer.PEER}-isbi-{budget.replace(' ', '')}.pt"
    if path.exists():
        return load_checkpoint(path), f"pretrained on ISBI 0-19 for {budget} (cached: {path})"
    ckpt = pretrain_peer(args, minutes)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(ckpt, path)
    return ckpt, f"pretrained now on {ckpt.provenance['data']} for {budget} (saved: {path})"


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
    steps = args.peer_pretrain_steps
    cfg = dataclasses.replace(base, model=bench_peer.PEER, model_kwargs={}, steps=steps or 10**9, val_every=10**9,
                              time_limit_s=0 if steps else minutes * 60, threads=args.threads, device=args.device)
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
    print(f"  [peer] pretraining {bench_peer.PEER} from scratch ({source}) on {data} for "
          + (f"{steps} steps" if steps else f"{minutes:g} min"), flush=True)
    with tempfile.TemporaryDirectory(prefix="neuroedge-peer-") as run_dir:
        result = drive(iter_fit(cfg, train, [], run_dir, provenance={"name": f"{bench_peer.PEER}-isbi",
                                                                      "data": data}))
        ckpt = load_checkpoint(result.last)
    ckpt.optimizer = None
    predictor = TorchPredictor(ckpt.build(), args.device)
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


def _typed(default: Any, text: str) -> Any:
    """``text`` read as the type of a FinetuneOptions field's ``default`` (a float where it is None)."""
    if isinstance(default, bool):
        return text.strip().lower() in ("1", "true", "yes", "on")
    return (type(default) if default is not None else float)(text)


def parse_grid(specs: list[str] | None, opts: Any) -> tuple[str | None, list[Any]]:
    """(field, values) of ``--grid NAME=V1,V2`` (values typed like the field's default); (None, [None]) without.
    ``--grid`` repeated runs every combination: the field is then the names joined by commas ("lr,crop") and a
    value the combination's values joined the same way ("0.0002,256"), the first values' combination first."""
    if not specs:
        return None, [None]
    names, axes = [], []
    for spec in specs:
        name, _, vals = spec.partition("=")
        default = getattr(opts, name)  # an unknown field is an error here, before anything runs
        names.append(name)
        axes.append([_typed(default, v) for v in vals.split(",")])
    if len(names) == 1:
        return names[0], axes[0]
    return ",".join(names), [",".join(map(str, combo)) for combo in itertools.product(*axes)]


def grid_options(opts: Any, field_name: str | None, value: Any) -> Any:
    """``opts`` with one grid value (of :func:`parse_grid`) applied."""
    if field_name is None:
        return opts
    names = field_name.split(",")
    if len(names) == 1:
        return dataclasses.replace(opts, **{field_name: value})
    texts = str(value).split(",")
    return dataclasses.replace(opts, **{n: _typed(getattr(opts, n), t) for n, t in zip(names, texts)})


def _register_peer() -> bool:
    """Make the smp peer's architecture known to the model registry; False where smp is not installed."""
    try:
        import bench_peer
        import segmentation_models_pytorch  # noqa: F401
    except ImportError:
        return False
    from napari_neuroedge.models import registry

    registry.ARCHITECTURES[bench_peer.PEER] = bench_peer.SmpUnetResNet18
    return True


def shift_data(shift: str, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    raw, lab = load_shift(shift, args.quick)
    if args.crop:
        raw, lab = raw[:, : args.crop, : args.crop], lab[:, : args.crop, : args.crop]
    return raw, lab


def mark_changed(data: list[Any], start_membranes: np.ndarray) -> list[Any]:
    """The corrected slices as a user hands them in after brushing the starting model's membranes
    (``start_membranes``: (n, H, W) bool, one per slice of ``data``) into the hand labels: ``corrected`` = the
    pixels whose label differs from that prediction (uint8 1 = changed)."""
    from napari_neuroedge.training.targets import corrected_pixels

    if len(data) != len(start_membranes):
        raise ValueError(f"{len(data)} slices but {len(start_membranes)} predictions")
    return [dataclasses.replace(sl, corrected=corrected_pixels(sl.label, np.asarray(m, bool)).astype(np.uint8))
            for sl, m in zip(data, start_membranes)]


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """One cell of the protocol, in this process or a worker: ``kind`` "zero" (the parent on the evaluated slices)
    or "run" (one fine-tune of the pair ``pair`` with options ``opts``, then the evaluated slices)."""
    from napari_neuroedge.inference.predict import TorchPredictor, predict_array
    from napari_neuroedge.models.checkpoint import load_checkpoint
    from napari_neuroedge.training.dataset import slices_from_arrays

    args = task["args"]
    C.set_threads(args.threads)
    if task["model"] != "ours":
        _register_peer()
    start = load_checkpoint(task["parent"])
    raw, lab = shift_data(task["shift"], args)
    eval_z = parse_slices(args.eval_slices)
    out = {k: task[k] for k in ("kind", "model", "value", "shift", "r", "pair")}
    if task["kind"] == "zero":
        before = predict_array(raw[eval_z], TorchPredictor(start.build(), args.device), norm=start.norm)
        return {**out, "metrics": measure(before, lab[eval_z], start, not args.no_seed_rules)}
    data = slices_from_arrays(raw, lab, start.norm, task["pair"], source=task["shift"])
    changed = None
    if args.changed == "parent":
        before = predict_array(raw[task["pair"]], TorchPredictor(start.build(), args.device), norm=start.norm)
        data = mark_changed(data, before >= start.threshold)
        changed = float(np.mean([np.mean(sl.corrected) for sl in data]))
    work = Path(task["work"])
    outcome, ft, wall = finetune(start, data, task["opts"], work, task["tag"])
    prob = predict_array(raw[eval_z], TorchPredictor(ft.build(), args.device), norm=ft.norm)
    m1 = measure(prob, lab[eval_z], ft, not args.no_seed_rules)
    for left in work.glob(f"{task['tag']}.*"):  # scored: its run folder and checkpoints are not needed
        if left.is_dir():
            shutil.rmtree(left, ignore_errors=True)
        else:
            left.unlink(missing_ok=True)
    return {**out, "metrics": {**m1, "wall": wall, "steps": outcome.steps, "parent_kept": outcome.parent_kept,
                               "parent_weight": outcome.parent_weight, "changed": changed},
            "kept": outcome.kept, "held_parent": _short(outcome.parent_metrics),
            "held_kept": _short(outcome.kept_metrics)}


def _said(res: dict[str, Any], field_name: str | None) -> str:
    m = res["metrics"]
    if res["kind"] == "zero":
        return (f"  [{res['shift']}] {res['model']} zero-shot".ljust(40)
                + "  ".join(f"{k} {m[k]:.4f}" for k in list(m)[:8]))
    value = f" {field_name}={res['value']}" if field_name else ""
    return (f"  [{res['shift']}] {res['model']}{value} pair {res['pair']}: {m['steps']} steps in {m['wall']:.0f} s; "
            f"kept {res['kept']!r}; held-out parent {res['held_parent']} kept {res['held_kept']}; "
            + "  ".join(f"{k} {m[k]:.4f}" for k in list(m)[:8]))


def collect(rows: list[dict[str, Any]], models: list[str], values: list[Any], shifts: list[str]
            ) -> dict[str, dict[Any, dict[str, dict[str, Any]]]]:
    """results[model][value][shift] = {"zero": metrics, "runs": [metrics, ...] in repeat order} of task rows."""
    results: dict[str, Any] = {m: {v: {s: {"zero": None, "runs": []} for s in shifts} for v in values}
                               for m in models}
    for row in sorted(rows, key=lambda r: -1 if r["r"] is None else r["r"]):
        if row["kind"] == "zero":
            for v in values:
                results[row["model"]][v][row["shift"]]["zero"] = row["metrics"]
        else:
            results[row["model"]][row["value"]][row["shift"]]["runs"].append(row["metrics"])
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shifts = args.shifts.split(",")
    from napari_neuroedge.config import FinetuneOptions, parse_loss
    from napari_neuroedge.models.checkpoint import load_checkpoint, save_checkpoint
    from napari_neuroedge.training.finetune import finetune_config, parent_recipe

    opts = FinetuneOptions(threads=args.threads, device=args.device)
    if args.quick:
        opts = dataclasses.replace(opts, time_limit_s=3.0, crop=64, batch=2)
    if args.time_limit is not None:
        opts = dataclasses.replace(opts, time_limit_s=args.time_limit)
    if args.steps:
        opts = dataclasses.replace(opts, time_limit_s=0.0, steps=args.steps)
    if args.loss:
        opts = dataclasses.replace(opts, loss=parse_loss(args.loss))
    field_name, values = parse_grid(args.grid, opts)
    if args.report_from:
        import json

        rows = [json.loads(line) for line in Path(args.report_from).read_text().splitlines() if line.strip()]
        models = list(dict.fromkeys(r["model"] for r in rows))
        values = list(dict.fromkeys(r["value"] for r in rows if r["kind"] == "run")) or values
        report(collect(rows, models, values, shifts), shifts, field_name, values, args)
        return 0
    if any(s != "synthetic" for s in shifts) and not (VNC / "stack1-raw.tif").exists():
        print(f"VNC data not found at {VNC}: nothing to measure (--shifts synthetic needs no data)")
        return 0
    C.set_threads(args.threads)
    C.print_header("bench_correction_loop: one-click fine-tune on new kinds of EM (issues 11, 23)", args.device,
                   args.quick)
    parent = load_checkpoint(args.parent)
    print(f"  parent: {args.parent} ({parent.arch} {parent.arch_kwargs})")
    print(f"  options: {opts}; grid: {field_name or 'none (the one-click defaults)'} {values if field_name else ''}"
          + (f"; {args.steps} steps a fine-tune, not the clock" if args.steps else ""))
    eval_z = parse_slices(args.eval_slices)
    pool = [z for z in parse_slices(args.pool) if z not in eval_z]
    work = Path(tempfile.mkdtemp(prefix="neuroedge-loop-"))
    pairs = [sorted(np.random.default_rng(r).choice(pool, 2, replace=False).tolist()) for r in range(args.repeats)]
    print(f"  corrected pairs {pairs} (the same on every shift), evaluated on {eval_z}", flush=True)

    def tasks(model: str, parent_ref: str, base_opts: Any, repeats: int | None = None) -> list[dict[str, Any]]:
        out = [{"kind": "zero", "model": model, "parent": parent_ref, "shift": s, "value": None, "r": None,
                "pair": None, "args": args, "value_first": values[0]} for s in shifts]
        for value in values:  # the one-click defaults (first value) first: a cut-short run still has them
            run_opts = grid_options(base_opts, field_name, value)
            for s in shifts:
                for r, pair in enumerate(pairs[:repeats]):
                    out.append({"kind": "run", "model": model, "parent": parent_ref, "shift": s, "value": value,
                                "r": r, "pair": pair, "args": args, "work": str(work),
                                "tag": f"{s}-{model.split()[0]}-{value}-{r}", "value_first": values[0],
                                "opts": dataclasses.replace(run_opts, seed=r)})
        return out

    ours_path = work / "ours-parent.pt"
    save_checkpoint(parent, ours_path)
    models = ["ours"]
    todo = tasks("ours", str(ours_path), opts)
    peer_todo: Any = None
    if args.peer != "none":
        if not _register_peer():
            print("segmentation-models-pytorch is not installed: no peer (pip install segmentation-models-pytorch)")
        else:
            peer_name = "smp Unet(resnet18)"
            models.append(peer_name)

            def peer_tasks() -> list[dict[str, Any]]:  # after the pretraining, which may take a while
                peer, how = peer_parent(args, parent, work)
                peer_opts = dataclasses.replace(opts, loss=opts.loss or parent_recipe(parent)[0])
                print(f"  peer: smp Unet(resnet18), {how}; fine-tune TrainConfig differs from ours in: "
                      + "; ".join(config_difference(finetune_config(parent, opts, False),
                                                    finetune_config(peer, peer_opts, False))), flush=True)
                path = work / "peer-parent.pt"
                save_checkpoint(peer, path)
                return tasks(peer_name, str(path), peer_opts, args.peer_repeats)

            peer_todo = peer_tasks
    try:
        rows = run_all(todo, peer_todo, args, field_name)
    finally:  # every fine-tune's run folder held gigabytes: a grid of 30 left 11 GB in /tmp
        shutil.rmtree(work, ignore_errors=True)
    report(collect(rows, models, values, shifts), shifts, field_name, values, args)
    return 0


def run_all(todo: list[dict[str, Any]], later: Any, args: argparse.Namespace, field_name: str | None
            ) -> list[dict[str, Any]]:
    """Run the tasks (``later()`` makes more once called: the peer's, after its pretraining), in order in this
    process or in ``--jobs`` worker processes; each result is printed and appended to ``--results``."""
    import json

    rows: list[dict[str, Any]] = []

    def done(res: dict[str, Any]) -> None:
        rows.append(res)
        print(_said(res, field_name), flush=True)
        if args.results:
            with open(args.results, "a") as f:
                f.write(json.dumps({k: v for k, v in res.items()}, default=float) + "\n")

    if args.jobs <= 1:
        for task in todo + (later() if later else []):
            done(run_task(task))
        return rows
    import multiprocessing as mp
    import threading
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn")) as pool:
        # queued in order of need, so a run cut short has the defaults of both models: ours, then the peer's (its
        # pretraining runs here while the workers fine-tune ours), then the other grid values
        ours_first = [t for t in todo if t["kind"] == "zero" or t["value"] == t["value_first"]]
        lock = threading.Lock()

        def submit(task: dict[str, Any]) -> Any:  # each result is said and saved as it comes, pretraining or not
            fut = pool.submit(run_task, task)

            def said(f: Any) -> None:
                if f.exception() is None:
                    with lock:
                        done(f.result())
            fut.add_done_callback(said)
            return fut

        futures = [submit(t) for t in ours_first]
        peer = later() if later else []
        peer_first = [t for t in peer if t["kind"] == "zero" or t["value"] == t["value_first"]]
        futures += [submit(t) for t in peer_first]
        queued = {id(t) for t in ours_first + peer_first}
        futures += [submit(t) for t in todo + peer if id(t) not in queued]
        for fut in as_completed(futures):
            fut.result()  # a failed task stops the run here, with its error
    return rows


def _default_time_limit() -> float:
    from napari_neuroedge.config import FinetuneOptions

    return FinetuneOptions().time_limit_s


def _short(m: dict[str, float] | None) -> str:
    return "-" if not m else f"F1 {m['f1']:.3f} Rand {m['rand_error']:.3f}"


def report(results: dict[str, Any], shifts: list[str], field_name: str | None, values: list[Any],
           args: argparse.Namespace) -> None:
    """Leave-one-shift-out choices, ratio lines against the targets, the README table."""
    rows: list[list[str]] = []
    after: dict[str, dict[str, dict[str, float]]] = {}  # model -> shift -> mean metrics at the chosen value
    for name, by_value in results.items():
        key = "" if name == "ours" else "peer_"
        # the recipe value for each shift, chosen on the others: lowest mean Rand after / zero-shot
        shifts_done = [s for s in shifts if all(by_value[v][s]["runs"] and by_value[v][s]["zero"] for v in values)]
        if len(shifts_done) < len(shifts):
            print(f"  [{name}] incomplete: no full results for {sorted(set(shifts) - set(shifts_done))}")
        score = {s: {v: float(np.mean([r["rand"] for r in by_value[v][s]["runs"]]))
                     / max(by_value[v][s]["zero"]["rand"], 1e-9) for v in values} for s in shifts_done}
        for shift in shifts_done:
            value = loso_choice(score, shift)
            cell = by_value[value][shift]
            m0, runs = cell["zero"], cell["runs"]
            rand = [r["rand"] for r in runs]
            f1 = [r["f1_exact"] for r in runs]
            walls = [r["wall"] for r in runs]
            kept = sum(bool(r["parent_kept"]) for r in runs)
            after.setdefault(name, {})[shift] = {k: float(np.mean([r[k] for r in runs]))
                                                 for k in ("pixel", "f1_exact", "rand")}
            sd = float(np.std(rand)) if len(rand) > 1 else 0.0
            C.ratio_line(f"{key}rand_after_over_before_{shift}", float(np.mean(rand)) / max(m0["rand"], 1e-9),
                         C.target_note(float(np.mean(rand)) - m0["rand"], "<=", sd,
                                       f"Rand error change {float(np.mean(rand)) - m0['rand']:+.4g}: ")
                         + " (never worse by more than the spread across repeats)")
            C.ratio_line(f"{key}f1_exact_gain_{shift}", max(float(np.mean(f1)) - m0["f1_exact"], 1e-3),
                         C.target_note(float(np.mean(f1)) - m0["f1_exact"], ">=", 0.1) + " (target on the hard ones)")
            C.ratio_line(f"{key}finetune_wall_s_{shift}", max(walls), C.target_note(max(walls), "<=", 120))
            choice = f"{field_name}={value}" if field_name else "defaults"
            rows.append([shift, name, "zero-shot", f"{m0['pixel']:.4f}", f"{m0['f1_exact']:.3f}", f"{m0['rand']:.4f}",
                         f"{m0['rand_mem']:.4f}", "", ""])
            rows.append([shift, name, f"fine-tuned ({choice}; parent kept {kept}/{len(runs)})",
                         spread([r["pixel"] for r in runs]), spread(f1), spread(rand),
                         spread([r["rand_mem"] for r in runs]),
                         ", ".join(f"{r['parent_weight']:g}" for r in runs), f"{np.mean(walls):.0f} s"])
        seed_rules(name, by_value, shifts_done, values[0])
    peers = [m for m in after if m != "ours"]
    for peer in peers[:1]:  # ours / the peer after the same service (below 1: ours lower; F1: above 1 ours higher)
        for shift in [s for s in shifts if s in after.get("ours", {}) and s in after[peer]]:
            for k in ("pixel", "f1_exact", "rand"):
                C.ratio_line(f"ours_over_peer_{k}_after_{shift}",
                             max(after["ours"][shift][k], 1e-9) / max(after[peer][shift][k], 1e-9),
                             f"{k} after fine-tuning: ours {after['ours'][shift][k]:.4f}, {peer} "
                             f"{after[peer][shift][k]:.4f}")
    C.print_readme_table(["shift", "model", "", "pixel error", "F1 exact", "Rand (instances)", "Rand (membranes)",
                          "parent weight kept", "fine-tune wall"], rows,
                         f"{', '.join(shifts)}: {args.repeats} random pairs of corrected slices from {args.pool}, "
                         f"evaluated on {args.eval_slices}{f' ({args.crop} px crops)' if args.crop else ''}, no TTA, "
                         f"{args.threads} threads, "
                         + (f"{args.steps}-step fine-tunes on {args.device}" if args.steps else
                            f"{args.time_limit or _default_time_limit():g} s fine-tunes") + "; mean (min-max) over the "
                         "pairs; recipe "
                         + ("chosen leave-one-shift-out over " + " x ".join(args.grid) if args.grid else "defaults")
                         + f" (`python benchmarks/bench_correction_loop.py {' '.join(sys.argv[1:])}`).")


def seed_rules(name: str, by_value: dict[Any, Any], shifts: list[str], value: Any) -> None:
    """The current seed rule against distance-transform seeds (parameters chosen leave-one-shift-out), on the
    zero-shot and fine-tuned probabilities of ``value``'s runs (nothing where they were not measured)."""
    if not shifts or f"rand_dist_{DIST_GRID[0][0]:g}_{DIST_GRID[0][1]:g}" not in by_value[value][shifts[0]]["zero"]:
        return
    for stage in ("zero", "runs"):
        def rands(shift: str, key: str) -> float:
            cell = by_value[value][shift]
            ms = [cell["zero"]] if stage == "zero" else cell["runs"]
            return float(np.mean([m[key] for m in ms]))

        keys = [f"rand_dist_{t:g}_{h:g}" for t, h in DIST_GRID]
        score = {s: {k: rands(s, k) / max(rands(s, "rand"), 1e-9) for k in keys} for s in shifts}
        wins = 0
        for shift in shifts:
            k = loso_choice(score, shift)
            cur, alt = rands(shift, "rand"), rands(shift, k)
            wins += alt < cur
            print(f"  seed rule [{name}, {'zero-shot' if stage == 'zero' else 'fine-tuned'}] {shift}: components "
                  f"{cur:.4f} vs distance seeds {alt:.4f} ({k[len('rand_dist_'):]} chosen on the other shifts)")
        print(f"  seed rule [{name}, {'zero-shot' if stage == 'zero' else 'fine-tuned'}]: distance seeds lower on "
              f"{wins} of {len(shifts)} shifts (adopt only if lower on at least {max(len(shifts) - 1, 1)})")


if __name__ == "__main__":
    sys.exit(main())
