"""``neuroedge`` command line: predict | train | finetune | evaluate | export.

Every subcommand drives the same Qt-free core as the napari widgets. Errors in the input print one line
(``neuroedge: error: ...``) and exit with status 2; Ctrl-C cancels cleanly (no half-written output) with 130.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .config import PARENT_WEIGHTS, PRECISIONS, SEED_THRESHOLD, FinetuneOptions
from .inference.tiling import DEFAULT_CONTEXT

EXIT_INPUT, EXIT_CANCELLED = 2, 130


class _TqdmProgress:
    """Progress -> a tqdm bar (stderr); never stops the job by itself.

    The bar starts at the first event that counts something, so what is said before it (the device, warnings)
    stands on its own line instead of being written into an empty bar's line; later lines go above the bar.
    """

    def __init__(self, desc: str, unit: str, quiet: bool = False) -> None:
        self.quiet, self.desc, self.unit = quiet, desc, unit
        self.bar: Any = None

    def _say(self, line: str) -> None:
        if self.quiet:
            return
        if self.bar is None:
            print(line, file=sys.stderr, flush=True)
        else:
            self.bar.write(line, file=sys.stderr)

    def update(self, event: Any) -> None:
        info = event.info or {}
        for key, say in (("device", "running on {}"), ("warning", "neuroedge: {}")):
            if key in info:
                self._say(say.format(info[key]))
        if not event.total:  # a stage line (loading, building), not progress
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(desc=self.desc, unit=self.unit, total=event.total, disable=self.quiet, dynamic_ncols=True,
                            file=sys.stderr)
        unit = event.unit.rstrip("s")
        if unit and not self.quiet and unit != self.bar.unit:  # a new stage counts other things (tiles, then instance slices)
            self.bar.unit = unit
            self.bar.set_description(f"{self.desc}: {event.stage}", refresh=False)
        self.bar.total = event.total
        self.bar.n = event.done
        if "loss" in info:
            post = {"loss": f"{info['loss']:.4f}"}
            if "val" in info:
                post.update({k: f"{info['val'][k]:.3f}" for k in ("f1", "rand_error") if k in info["val"]})
            self.bar.set_postfix(post, refresh=False)
        self.bar.refresh()

    def should_stop(self) -> bool:
        return False

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------------------ predict

def cmd_predict(args: argparse.Namespace) -> int:
    from .config import TileConfig, TTAConfig
    from .inference.files import OutputFiles, iter_predict_files, predict_blockwise_files
    from .inference.pipeline import PredictionRequest
    from .io.stacks import open_stack
    from .models.checkpoint import load_checkpoint
    from .progress import drive

    files = OutputFiles(args.output, args.prob, args.instances, args.uncertainty, args.overlay)
    stack = open_stack(args.input)
    if args.uncertainty is not None and args.tta == 1:
        raise ValueError("--uncertainty needs --tta 6 or 8 (it is the variance over the TTA transforms)")
    slices = _slice_list(args.slices, stack.shape)
    ckpt = load_checkpoint(args.model)
    if args.threshold is None and not args.quiet and float(ckpt.threshold) != 0.5:  # the pipeline applies it
        print(f"membrane threshold {float(ckpt.threshold):g} (calibrated, from the model)", file=sys.stderr)
    request = PredictionRequest(model=ckpt, tile=TileConfig(tile=args.tile, context=args.context, batch=args.batch),
                                tta=TTAConfig(n=args.tta), precision=args.precision, device=args.device,
                                threshold=args.threshold, seed_threshold=args.seed_threshold,
                                slices=slices)
    if args.scheduler is not None:  # workers on other processes load the model from the file it came from
        progress = _TqdmProgress(f"predict {Path(args.input).name} (blockwise)", "block", args.quiet)
        try:
            predict_blockwise_files(args.input, request, files, chunk=args.chunk,
                                    block=args.block, scheduler=args.scheduler, workers=args.workers,
                                    devices=args.devices.split(",") if args.devices else None, progress=progress)
        finally:
            progress.close()
    else:
        progress = _TqdmProgress(f"predict {Path(args.input).name}", "tile", args.quiet)
        try:
            drive(iter_predict_files(stack, request, files, Path(args.input).name), progress)
        finally:
            progress.close()
    if not args.quiet:
        print("wrote " + ", ".join(str(p) for p in files.paths()), file=sys.stderr)
    return 0


def _slice_list(spec: str | None, shape: tuple[int, ...], flag: str = "--slices") -> list[int] | None:
    """``flag``'s slices as indices of a stack of this shape (None: no flag, all slices). A spec that does not fit
    the stack (a range past its end, a 2D image) is a one-line error naming the flag, never silently cut short."""
    from .slices import parse_slices

    if not spec:
        return None
    if len(shape) != 3:
        raise ValueError(f"{flag} needs a 3D stack; the input is a single 2D image")
    try:
        return list(parse_slices(spec, int(shape[0])))
    except ValueError as exc:
        raise ValueError(f"{flag}: {exc}") from None


# -------------------------------------------------------------------------------------------- train / finetune

def _train_config(args: argparse.Namespace) -> Any:
    from dataclasses import replace

    from .config import TrainConfig, load_json, parse_augment, parse_loss

    cfg = TrainConfig()
    if getattr(args, "config", None):
        cfg = load_json(TrainConfig, args.config)
    changes: dict[str, Any] = {}
    for name in ("steps", "batch", "val_every", "seed", "device", "threads", "select", "time_limit_s", "ema_decay",
                 "val_tta", "keep_validated"):
        val = getattr(args, name, None)
        if val is not None:
            changes[name] = val
    if getattr(args, "model", None):
        changes["model"] = args.model
    if getattr(args, "model_kwargs", None):
        changes["model_kwargs"] = json.loads(args.model_kwargs)
    if args.lr is not None:
        changes["lr_backbone"] = args.lr
        changes["lr_head"] = args.lr if args.lr_head is None else args.lr_head
    elif args.lr_head is not None:
        changes["lr_head"] = args.lr_head
    if args.crop is not None:
        changes["augment"] = replace(cfg.augment, crop=args.crop)
    if args.loss:
        changes["loss"] = parse_loss(args.loss, cfg.loss)
    if getattr(args, "augment", None):
        changes["augment"] = parse_augment(args.augment, changes.get("augment", cfg.augment))
    return replace(cfg, **changes)


def _refuse_existing(path: Path) -> Path:
    """``path``, after checking nothing is there yet: fail before the work, not after it."""
    from .io.atomic import check_free

    check_free(path)
    return path


def _run_fit(cfg: Any, train: list[Any], val: list[Any], output: Path, init: Any, replay: list[Any],
             provenance: dict[str, Any], quiet: bool, resume: Any = None) -> int:
    from .models.checkpoint import load_checkpoint, save_checkpoint
    from .progress import drive
    from .training.loop import iter_fit

    _refuse_existing(output)
    run_dir = output.with_name(output.stem + ".run")
    progress = _TqdmProgress(f"train {cfg.model if init is None else 'finetune'}", "step", quiet)
    try:
        result = drive(iter_fit(cfg, train, val, run_dir, init=init, replay=replay, resume=resume,
                                provenance=provenance), progress)
    finally:
        progress.close()
    chosen = result.best or result.last
    ckpt = load_checkpoint(chosen)
    ckpt.optimizer = None
    ckpt.provenance["selected_from"] = chosen.name
    save_checkpoint(ckpt, output)
    summary = {"checkpoint": str(output), "run_dir": str(run_dir), "steps": result.steps,
               "best_val": result.best_metrics}
    print(json.dumps(summary, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .models.checkpoint import load_checkpoint
    from .training.dataset import load_data

    cfg = _train_config(args)
    train = load_data(args.data, args.train_slices, cfg.norm, args.labels, args.windows, args.window, cfg.seed)
    val = load_data(args.val_data or args.data, args.val_slices, cfg.norm) if (args.val_slices or args.val_data) else []
    prov = {"command": "neuroedge " + " ".join(sys.argv[1:]), "data": str(args.data), "name": Path(args.output).stem}
    resume = load_checkpoint(args.resume) if args.resume else None
    init = None
    if args.init:
        from dataclasses import replace

        init = load_checkpoint(args.init)
        cfg = replace(cfg, model=init.arch, model_kwargs=dict(init.arch_kwargs), norm=init.norm)
        prov["initialised_from"] = str(args.init)
    return _run_fit(cfg, train, val, Path(args.output), init, [], prov, args.quiet, resume=resume)


# FinetuneOptions fields whose flags mean something else (--lr is the backbone's rate, --loss a string): set by
# hand in finetune_options; every other field is set by the flag of the same dest, when given
_FINETUNE_BY_HAND = frozenset({"lr", "backbone_lr_factor", "loss", "cross_slices"})


def finetune_options(args: argparse.Namespace) -> Any:
    """The CLI's flags as :class:`FinetuneOptions`: no flag leaves the one-click default the widget uses."""
    from dataclasses import fields, replace

    from .config import FinetuneOptions, parse_loss

    opts = FinetuneOptions()
    changes: dict[str, Any] = {f.name: getattr(args, f.name) for f in fields(FinetuneOptions)
                               if f.name not in _FINETUNE_BY_HAND and getattr(args, f.name, None) is not None}
    head = args.lr_head if args.lr_head is not None else args.lr
    if head is not None:
        changes["lr"] = head
        changes["backbone_lr_factor"] = (args.lr / head) if args.lr is not None else opts.backbone_lr_factor
    if args.loss:
        changes["loss"] = parse_loss(args.loss)
    if getattr(args, "validation", None):
        changes["cross_slices"] = args.validation == "slices"
    return replace(opts, **changes)


def cmd_finetune(args: argparse.Namespace) -> int:
    from .models.checkpoint import load_checkpoint
    from .progress import drive
    from .training.dataset import load_data
    from .training.finetune import iter_finetune

    init = load_checkpoint(args.init)
    opts = finetune_options(args)
    output = _refuse_existing(Path(args.output))
    train = load_data(args.data, args.train_slices, init.norm, args.labels, args.windows, args.window, opts.seed)
    val = load_data(args.val_data, args.val_slices, init.norm) if args.val_data else None
    replay = load_data(args.replay_data, args.replay_slices, init.norm) if args.replay_data else []
    prov = {"command": "neuroedge " + " ".join(sys.argv[1:]), "data": str(args.data), "finetuned_from": str(args.init),
            "finetuned_by": "neuroedge finetune", "replay": args.replay_data}
    progress = _TqdmProgress("finetune", "step", args.quiet)
    try:
        outcome = drive(iter_finetune(init, train, output.with_name(output.stem + ".run"), output, options=opts,
                                      replay=replay, val=val, provenance=prov), progress)
    finally:
        progress.close()
    print(json.dumps({"checkpoint": str(outcome.path), "steps": outcome.steps, "best_val": outcome.best_metrics,
                      "kept": outcome.kept, "parent_kept": outcome.parent_kept, "parent_weight": outcome.parent_weight,
                      "kept_val": outcome.kept_metrics, "parent_val": outcome.parent_metrics,
                      "candidate": str(outcome.candidate) if outcome.candidate else None,
                      "threshold": outcome.threshold, "threshold_source": outcome.threshold_source,
                      "notes": outcome.notes}, indent=2))
    return 0


# ------------------------------------------------------------------------------------------ evaluate / export

def cmd_evaluate(args: argparse.Namespace) -> int:
    from .io.stacks import open_stack
    from .metrics import to_membrane

    pred = np.asarray(open_stack(args.pred).data[:])
    gt_raw = np.asarray(open_stack(args.gt).data[:])
    if args.gt_slices:
        gt_raw = gt_raw[_slice_list(args.gt_slices, gt_raw.shape, "--gt-slices")]
        if pred.ndim == 2 and gt_raw.shape[0] == 1:  # one slice against one slice
            gt_raw = gt_raw[0]
    if pred.shape != gt_raw.shape:
        raise ValueError(_shape_mismatch(pred.shape, gt_raw.shape, args.gt_slices))
    gt = (gt_raw == args.gt_membrane_value).astype(np.uint8)
    if pred.dtype.kind != "f" and args.pred_membrane_value is not None:
        pred = (pred == args.pred_membrane_value).astype(np.uint8)
    threshold, seed = args.threshold, args.seed_threshold
    if args.model:
        from .models.checkpoint import load_checkpoint

        ckpt = load_checkpoint(args.model)
        threshold = ckpt.threshold if threshold is None else threshold
        seed = ckpt.seed_threshold if seed is None else seed
    threshold = 0.5 if threshold is None else threshold
    seed = SEED_THRESHOLD if seed is None else seed
    _check_label_convention(gt_raw, gt, to_membrane(pred, threshold), args.gt_membrane_value, args.force)
    print(json.dumps(_evaluate_json(pred, gt, threshold, seed, args.tolerance), indent=2))
    return 0


def _evaluate_json(pred: np.ndarray, gt: np.ndarray, threshold: float, seed: float, tolerance: float) -> dict[str, Any]:
    """evaluate's figures, saying which instances the Rand error and VI come from.

    A probability: ``rand_error``/``vi_*`` of the watershed ``predict --instances`` writes (seeds below
    ``seed_threshold``), plus ``rand_error_components``: of the connected components of the membrane at
    ``threshold``, the figure the uint8 labels of the same prediction give. Labels: connected components only
    (no probability to flood), thresholds null. ``rand_error_<instances>`` always repeats the headline.
    """
    from .inference.postprocess import instances_from_probability
    from .metrics import evaluate, instance_scores

    prob = pred.dtype.kind == "f"
    fn = (lambda p: instances_from_probability(p, seed)) if prob else None
    result: dict[str, Any] = {k: round(float(v), 6) for k, v in
                              evaluate(pred, gt, instances_fn=fn, threshold=threshold, tolerance=tolerance).items()}
    method = "watershed" if prob else "components"
    result.update({"instances": method, "threshold": float(threshold) if prob else None,
                   "seed_threshold": float(seed) if prob else None, f"rand_error_{method}": result["rand_error"]})
    if prob:
        result["rand_error_components"] = round(instance_scores(pred, gt, None, threshold)["rand_error"], 6)
    return result


def _shape_mismatch(pred: tuple[int, ...], gt: tuple[int, ...], gt_slices: str | None) -> str:
    """One line on why a prediction and its ground truth do not line up, naming --gt-slices where it is the cure."""
    msg = f"prediction {pred} and ground truth {gt} shapes differ"
    if len(gt) != 3 or pred[-2:] != gt[-2:]:
        return msg
    n = pred[0] if len(pred) == 3 else 1
    if gt_slices:
        return f"{msg}: --gt-slices {gt_slices} selects {gt[0]} slices, the prediction has {n}"
    return (f"{msg}: the prediction has {n} of the {gt[0]} slices; name them with --gt-slices (e.g. --gt-slices "
            f"0:{n} after predict --slices 0:{n})")


def _check_label_convention(gt_raw: np.ndarray, gt: np.ndarray, pred_membrane: np.ndarray, value: int,
                            force: bool) -> None:
    """Catch a wrong label convention before it gives numbers (membranes are 10-30% of an EM slice).

    A ground truth with no membrane, or mostly membrane, is read the wrong way round: refused (ValueError, one
    line naming ``--gt-membrane-value``) unless ``force``; every metric against it would be meaningless. A
    prediction that disagrees with the ground truth on most pixels may be inverted (``--pred-membrane-value``)
    or just a bad model (an untrained one disagrees on about half): its numbers are true, so a one-line warning.
    """
    which = "give the value that means membrane (default 1; ISBI 2012 labels: 0), or --force"
    if not gt.any() and not force:
        values = ", ".join(str(v) for v in np.unique(gt_raw)[:8])
        raise ValueError(f"no ground-truth pixel equals --gt-membrane-value {value} (its values: {values}); {which}")
    share = float(gt.mean())
    if share > 0.5 and not force:
        raise ValueError(f"--gt-membrane-value {value} makes {share:.0%} of the ground truth membrane (EM membranes "
                         f"are 10-30%): inverted labels? {which[0].upper()}{which[1:]}")
    disagree = float(np.count_nonzero(pred_membrane != gt.astype(bool)) / gt.size)
    if disagree > 0.5:
        print(f"neuroedge: warning: prediction and ground truth disagree on {disagree:.0%} of pixels: an inverted "
              f"--pred-membrane-value or --gt-membrane-value ({value})?", file=sys.stderr)


def cmd_export(args: argparse.Namespace) -> int:
    from .io.export import ExportItem, export_slices
    from .io.stacks import open_stack

    img = open_stack(args.image)
    lab = open_stack(args.labels)
    if img.shape != lab.shape:
        raise ValueError(f"image {img.shape} and labels {lab.shape} shapes differ")
    pred = open_stack(args.prediction).data if args.prediction else None
    mask = open_stack(args.mask).data if args.mask else None
    picked = _slice_list(args.slices, img.shape)
    zs: list[int | None] = [None] if len(img.shape) == 2 else list(range(img.shape[0]) if picked is None else picked)
    voxel = img.voxel_size
    pixel_size = [float(v) for v in voxel[-2:]] if voxel and all(v == v and v > 0 for v in voxel[-2:]) else None
    items = []
    for z in zs:
        get = (lambda a: np.asarray(a[z])) if z is not None else (lambda a: np.asarray(a[...]))
        items.append(ExportItem(get(img.data), get(lab.data) == args.membrane_value if args.membrane_value is not None
                                else get(lab.data) > 0, None if mask is None else get(mask),
                                None if pred is None else get(pred),
                                {"source": str(args.image), "slice": int(z or 0), "model": args.model_name,
                                 "pixel_size": pixel_size, "pixel_size_unit": "nm" if pixel_size else "unknown"}))
    entries = export_slices(args.output, items)
    print(json.dumps([e["name"] for e in entries]))
    return 0


def _parse_thresholds(spec: str | None) -> tuple[float, ...]:
    """"0.3:0.7:0.05" (start:stop:step, stop included) or "0.5,0.6" -> thresholds; None -> the default grid."""
    from .training.calibration import DEFAULT_THRESHOLDS

    if not spec:
        return DEFAULT_THRESHOLDS
    try:
        if ":" in spec:
            start, stop, step = (float(v) for v in spec.split(":"))
            if step <= 0:
                raise ValueError("step must be positive")
            return tuple(float(v) for v in np.round(np.arange(start, stop + step / 2, step), 6))
        return tuple(float(v) for v in spec.split(","))
    except ValueError as exc:
        raise ValueError(f"--thresholds {spec!r}: expected START:STOP:STEP or a comma list ({exc})") from None


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .training.calibration import iter_calibrate
    from .config import TileConfig, TTAConfig
    from .inference.pipeline import PredictionRequest
    from .io.stacks import open_stack
    from .models.checkpoint import load_checkpoint, save_checkpoint
    from .progress import drive

    out = _refuse_existing(Path(args.output))
    thresholds = _parse_thresholds(args.thresholds)
    img, lab = open_stack(args.image), open_stack(args.labels)
    slices = _slice_list(args.slices, img.shape)
    request = PredictionRequest(model=load_checkpoint(args.model), tile=TileConfig(tile=args.tile),
                                tta=TTAConfig(n=args.tta), device=args.device, slices=slices)
    record = {"command": "neuroedge " + " ".join(sys.argv[1:]), "image": str(args.image), "labels": str(args.labels),
              "slices": args.slices}
    progress = _TqdmProgress(f"calibrate on {Path(args.image).name}", "tile", args.quiet)
    try:
        calibrated, errors = drive(iter_calibrate(img.data, lab.data, request, args.gt_membrane_value, thresholds,
                                                  record), progress)
    finally:
        progress.close()
    save_checkpoint(calibrated, out)
    best = calibrated.threshold
    print(json.dumps({"checkpoint": str(out), "threshold": best, "pixel_error": round(errors[best], 6),
                      "pixel_error_by_threshold": calibrated.provenance["calibration"]["pixel_error_by_threshold"]},
                     indent=2))
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    from .models.averaging import average_checkpoints
    from .models.checkpoint import load_checkpoint, save_checkpoint

    out = _refuse_existing(Path(args.output))
    ckpts = [load_checkpoint(p) for p in args.checkpoints]
    sources = [{"path": str(p), "step": c.step, "command": c.provenance.get("command")}
               for p, c in zip(args.checkpoints, ckpts)]
    avg = average_checkpoints(ckpts, {"command": "neuroedge " + " ".join(sys.argv[1:]), "name": out.stem,
                                      "averaged_from": sources})
    save_checkpoint(avg, out)
    print(json.dumps({"checkpoint": str(out), "averaged": len(ckpts)}))
    return 0


def cmd_package(args: argparse.Namespace) -> int:
    from .models.bioimageio.export import package_model

    out = _refuse_existing(Path(args.output))
    if out.suffix.lower() != ".zip":
        raise ValueError(f"{out}: a bioimage.io package is a .zip file")
    package_model(args.model, out, name=args.name)
    print(json.dumps({"package": str(out)}))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .io.stacks import write_array
    from .io.atomic import check_free
    from .io.sample import synthetic_em

    check_free(args.output, args.labels)  # both or neither
    s = synthetic_em((args.slices, args.size, args.size), cell_size=args.cell_size, seed=args.seed)
    write_array(args.output, s.image)
    if args.labels:
        write_array(args.labels, s.membrane)
    print(json.dumps({"image": str(args.output), "labels": args.labels, "shape": list(s.image.shape),
                      "dtype": str(s.image.dtype)}))
    return 0


# -------------------------------------------------------------------------------------------------- parser

def _add_train_args(p: argparse.ArgumentParser, finetune: bool) -> None:
    p.add_argument("--data", required=True, help="ISBI-style folder (train-volume.tif/train-labels.tif, 0 = membrane) "
                   "or a training-set folder (images/, labels/, manifest.json)")
    p.add_argument("--labels", help="with --data as an image (TIFF/zarr, any size): its membrane labels "
                   "(non-zero = membrane); training windows are read lazily from both")
    p.add_argument("--windows", type=int, default=64, help="with --labels: how many windows to sample (64)")
    p.add_argument("--window", type=int, default=512, help="with --labels: window size in px (512)")
    p.add_argument("--train-slices", help="slices of --data to train on, e.g. 0:20 or 0:20,25:30 (default: all)")
    p.add_argument("--val-data", help="folder for validation slices (default: --data)")
    p.add_argument("--val-slices", help="slices used for validation, e.g. 20:25 (default: none)")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (.pt; never overwritten); the run "
                   "folder NAME.run/ beside it keeps last.pt, best.pt, log.jsonl and config.json")
    if not finetune:
        p.add_argument("--config", help="TrainConfig JSON (e.g. a run's config.json); flags override it")
    if not finetune:
        p.add_argument("--model", help="unet | unet-large | casenet | dff (default unet)")
        p.add_argument("--model-kwargs", help='JSON, e.g. \'{"base": 32}\'')
        p.add_argument("--resume", help="continue an interrupted run from its last.pt")
        p.add_argument("--init", help="start from these weights (checkpoint path or bundled name) instead of "
                       "random ones; its architecture, normalisation and measured context carry over (calibrate the "
                       "threshold afterwards)")
        p.add_argument("--augment", help="augmentation settings, e.g. scale_p=0.5,gamma_p=0.3,blur_p=0.2,noise_p=0.2 "
                       "(fields of AugmentConfig; the others keep their values)")
    p.add_argument("--steps", type=int)
    p.add_argument("--time-limit-s", type=float, dest="time_limit_s",
                   help="stop after this many seconds; the learning-rate schedule follows time")
    p.add_argument("--batch", type=int)
    p.add_argument("--crop", type=int, help="training crop size in px")
    p.add_argument("--lr", type=float, help="learning rate (backbone; also head unless --lr-head)")
    p.add_argument("--lr-head", type=float)
    p.add_argument("--loss", help="term weights, e.g. f1=0.5,focal=0.5,skeleton_recall=0.25 "
                   "(terms: f1 focal edge skeleton_recall weighted_bce dice bce)")
    p.add_argument("--val-every", type=int, dest="val_every")
    p.add_argument("--ema", type=float, dest="ema_decay", metavar="DECAY",
                   help="keep, validate and save a moving average of the weights (e.g. 0.999; default off)")
    one_click = FinetuneOptions()  # the help states the defaults the form and the service use
    if finetune:  # the kept model is always chosen on F1 and Rand error together (the guard); this picks its candidate
        rules = {"f1-near": "boundary F1, near your changes too", "f1-rand": "F1 minus Rand error at the parent's "
                 "thresholds"}
        p.add_argument("--select", choices=list(rules), help="which validated step of each fold becomes the guard's "
                       "candidate: " + " or ".join(f"{k} ({'default: ' if k == one_click.select else ''}{v})"
                                                   for k, v in rules.items()))
    else:
        p.add_argument("--select", choices=["f1", "rand", "f1-rand", "f1-near"], help="checkpoint selection score")
    p.add_argument("--val-tta", type=int, choices=[1, 6, 8], dest="val_tta",
                   help="validate with this many flips/rotations averaged, as prediction will run (default 1)")
    p.add_argument("--keep-validated", action="store_true", default=None, dest="keep_validated",
                   help="also keep every validated checkpoint in the run folder (step-NNNNNN.pt)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto | cpu | cuda | mps")
    p.add_argument("--threads", type=int, help="torch CPU threads (0 = default)")
    p.add_argument("--quiet", action="store_true")
    if finetune:
        p.add_argument("--replay-data", help="original training data mixed in so the model does not forget")
        p.add_argument("--replay-slices")
        p.add_argument("--replay-fraction", type=float, dest="replay_fraction")
        p.add_argument("--corrected-weight", type=float, dest="corrected_weight",
                       help=f"loss weight on pixels the user corrected (default {one_click.corrected_weight:g})")
        p.add_argument("--holdout", type=float, help="fraction of each slice's area (blocks spread over it) held out "
                       "for validation when no --val-data is given and blocks are used "
                       f"(default {one_click.holdout:g}; 0: none)")
        p.add_argument("--validation", choices=("slices", "blocks"),
                       help="without --val-data: 'slices' (default, with two corrected slices or more: two runs, "
                       "each validated on the whole slices the other trained on) or 'blocks' (one run, held-out "
                       "blocks of every slice)")
        p.add_argument("--parent-weight", type=float, dest="parent_weight",
                       help="a parent weight (WiSE-FT) tried besides "
                       + ", ".join(f"{w:g}" for w in PARENT_WEIGHTS) + " when the kept model is chosen on the held-out "
                       f"pixels (default {one_click.parent_weight:g})")
        p.add_argument("--precision", choices=list(PRECISIONS), help="auto (default), fp32, bf16, fp16")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuroedge", description="Neuron-membrane segmentation of EM stacks.")
    parser.add_argument("--version", action="version", version=f"napari-neuroedge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="membrane prediction of an EM image or stack",
                       description="Tiled (optionally TTA) membrane prediction. OUT: uint8 labels, 1 = membrane.")
    p.add_argument("input", help="TIFF/OME-TIFF/BigTIFF, .zarr, .png, .npy or a folder of slices")
    p.add_argument("-o", "--output", required=True, help="membrane labels (uint8, 1 = membrane); .tif, .zarr or "
                   ".ome.zarr (NGFF multiscale, nearest-neighbour pyramid)")
    p.add_argument("--model", default="default", help="bundled model name, checkpoint path, or a bioimage.io "
                   "package (.zip or rdf.yaml) of a 2D one-channel boundary model (default: default)")
    p.add_argument("--tile", type=int, default=0, help="largest tile in px (default 0: as large as the device's free "
                   "memory allows, up to 2048); an image that fits is predicted in one pass, larger ones with the "
                   "fewest tile pixels")
    p.add_argument("--context", type=int, default=0, help="tile overlap context in px on each side (default 0: the "
                   f"model's measured receptive context, {DEFAULT_CONTEXT} px for models that lack it)")
    p.add_argument("--batch", type=int, default=4, help="tiles per forward pass (default 4)")
    p.add_argument("--tta", type=int, default=1, choices=[1, 6, 8], help="test-time augmentation: 1 (off), 6, 8")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default auto)")
    p.add_argument("--threshold", type=float, help="membrane threshold on the probability (default: the model's, "
                   "0.5 unless calibrated with `neuroedge calibrate`)")
    p.add_argument("--prob", help="also write the float32 boundary probability here (.ome.zarr: mean pyramid)")
    p.add_argument("--instances", help="also write uint32 neuron instances (watershed) here; P.ome.zarr/labels/NAME "
                   "stores them as an NGFF label of the --prob P.ome.zarr image")
    p.add_argument("--seed-threshold", type=float, dest="seed_threshold",
                   help="instances grow from pixels with boundary probability below this (default: the model's; "
                   f"{SEED_THRESHOLD} unless a fine-tune recalibrated it)")
    p.add_argument("--uncertainty", help="also write the per-pixel TTA variance here (needs --tta 6 or 8)")
    p.add_argument("--overlay", help="also write a PNG of every predicted slice (at most 16, evenly spaced), each "
                   "captioned with its slice number, membranes overlaid beside the probability")
    p.add_argument("--slices", help="slices of a stack to predict, e.g. 0:10 (default: all)")
    p.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                   help="auto (default): fp16 autocast on CUDA, bf16 on CPUs with AMX/AVX512-bf16, else fp32")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("blockwise (Dask) prediction: restartable, for volumes beyond one machine")
    g.add_argument("--scheduler", help="threads | sync | local (a LocalCluster here) | a Dask scheduler ADDRESS; "
                   "needs --prob PATH.zarr")
    g.add_argument("--workers", type=int, help="threads or local worker processes (default: CPU count)")
    g.add_argument("--devices", help="one local worker per device, e.g. cuda:0,cuda:1")
    g.add_argument("--chunk", type=int, help="output zarr chunk size in y/x px (default 1024)")
    g.add_argument("--block", type=int, help="task block size in y/x px, a multiple of --chunk (default up to 4096)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("train", help="train a model from scratch")
    _add_train_args(p, finetune=False)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune", help="fine-tune a checkpoint on corrected slices")
    p.add_argument("--from", dest="init", required=True, help="checkpoint (path or bundled name) to start from")
    _add_train_args(p, finetune=True)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("evaluate", help="pixel error, boundary F1 and Rand error of a prediction; prints JSON")
    p.add_argument("pred", help="probability (float) or membrane labels (uint8, non-zero = membrane)")
    p.add_argument("gt", help="ground-truth membrane labels")
    p.add_argument("--gt-membrane-value", type=int, default=1, help="GT value meaning membrane (default 1, as in "
                   "this project's labels and the VNC stacks; ISBI 2012's train-labels.tif: 0)")
    p.add_argument("--pred-membrane-value", type=int, help="prediction value meaning membrane (default: non-zero)")
    p.add_argument("--force", action="store_true", help="evaluate even when the ground truth has no membrane or is "
                   "mostly membrane (refused by default: an inverted --gt-membrane-value makes every figure "
                   "meaningless)")
    p.add_argument("--gt-slices", help="compare with these GT slices only, e.g. 20:25")
    p.add_argument("--threshold", type=float, help="membrane threshold on a probability (default: --model's, "
                   "else 0.5)")
    p.add_argument("--model", help="take the membrane threshold from this model (bundled name or checkpoint)")
    p.add_argument("--seed-threshold", type=float, dest="seed_threshold",
                   help="instances (for Rand error / VI) grow from probabilities below this (default: --model's, "
                   f"else {SEED_THRESHOLD})")
    p.add_argument("--tolerance", type=float, default=2.0, help="boundary match tolerance in px (2)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("calibrate", help="choose a model's membrane threshold on labelled slices",
                       description="Predicts IMAGE with MODEL, finds the threshold with the lowest pixel error "
                       "against LABELS and writes a copy of the model that predicts with it by default. "
                       "Use training slices, not the ones you report.")
    p.add_argument("image", help="EM image or stack")
    p.add_argument("labels", help="its membrane labels")
    p.add_argument("--model", default="default", help="bundled model name or checkpoint path (default: default)")
    p.add_argument("-o", "--output", required=True, help="calibrated checkpoint to write (.pt; never overwritten)")
    p.add_argument("--gt-membrane-value", type=int, default=1, help="label value meaning membrane (default 1; "
                   "ISBI 2012's train-labels.tif: 0)")
    p.add_argument("--slices", help="slices to calibrate on, e.g. 0:20 (default: all)")
    p.add_argument("--tta", type=int, default=6, choices=[1, 6, 8], help="as you will predict (default 6)")
    p.add_argument("--thresholds", help="START:STOP:STEP or a comma list (default 0.3:0.7:0.05)")
    p.add_argument("--tile", type=int, default=0, help="largest tile in px (default 0: as memory allows, as predict)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default auto)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("average", help="average the weights of checkpoints of one run (weight averaging)")
    p.add_argument("checkpoints", nargs="+", help="checkpoints of one architecture, e.g. a run's step-*.pt")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (.pt; never overwritten)")
    p.set_defaults(func=cmd_average)

    p = sub.add_parser("package", help="write a bioimage.io model package (zip) of a model",
                       description="bioimage.io model spec 0.5: pytorch_state_dict + TorchScript weights, "
                       "percentile preprocessing, test tensors from the bundled sample, cover, citations and the "
                       "training data's terms. TTA and the threshold are not in the spec: the package documents "
                       "ours. Check it with `bioimageio test OUT.zip`.")
    p.add_argument("model", help="bundled model name (default), a fine-tuned model's checkpoint path")
    p.add_argument("-o", "--output", required=True, help="package to write (.zip; never overwritten)")
    p.add_argument("--name", help="model name in the package (default: the checkpoint's)")
    p.set_defaults(func=cmd_package)

    p = sub.add_parser("export", help="add slices + corrected labels to a training-set folder")
    p.add_argument("image")
    p.add_argument("labels", help="membrane labels (non-zero = membrane unless --membrane-value)")
    p.add_argument("-o", "--output", required=True, help="training-set folder (created or added to)")
    p.add_argument("--slices", help="slices to export (default: all)")
    p.add_argument("--membrane-value", type=int)
    p.add_argument("--mask", help="ignore mask (non-zero = labelled)")
    p.add_argument("--prediction", help="the model's prediction before correction (to up-weight corrections)")
    p.add_argument("--model-name", default=None)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("sample", help="write a synthetic EM-like stack (and its membrane labels)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--labels", help="also write the true membranes (uint8, 1 = membrane)")
    p.add_argument("--slices", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--cell-size", type=float, default=40.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .io.atomic import OutputExistsError
    from .io.stacks import InputError
    from .progress import Cancelled

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from .models.checkpoint import CheckpointError

        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("neuroedge: cancelled; no partial output was left", file=sys.stderr)
        return EXIT_CANCELLED
    except Cancelled:
        return EXIT_CANCELLED
    except (InputError, CheckpointError, OutputExistsError, FileNotFoundError, FileExistsError, ValueError,
            KeyError) as exc:
        msg = str(exc).strip('"') or type(exc).__name__
        print(f"neuroedge: error: {msg}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
