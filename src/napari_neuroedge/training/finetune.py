"""The one fine-tune service: the recipe, the held-out validation, the checkpoint choice and the finished model.

The napari Fine-tune button and ``neuroedge finetune`` both build a :class:`FinetuneOptions` (the button's form
and the CLI's flags map onto the same fields of :class:`~napari_neuroedge.config.FinetuneOptions`, with the
same defaults) and run :func:`iter_finetune`:

1. **Recipe** (:func:`finetune_config`): the parent's loss and augmentation, the parent's normalisation, a
   short schedule that follows the clock (``time_limit_s``), corrected pixels up-weighted, replay of the
   parent's data when given. bf16/fp16 autocast where the hardware has it (``precision="auto"``).
2. **Honest validation**: with two corrected slices or more, whole slices
   (:func:`~napari_neuroedge.training.holdout.slice_folds`): two runs of half the clock each, one trained on
   every other slice and validated on the rest, one the other way round, so every slice is validated on by a
   model that never saw it (blocks of a slice trained on flatter a model: issue 23); with one slice, blocks
   spread over it (:func:`~napari_neuroedge.training.holdout.split_holdout`, ``holdout`` of its area; where the
   user's changes are known, their share of them too) are never trained on. The parent is validated there first
   (step 0), then every ``val_every`` steps, with the same measures: boundary F1 and the Rand error of the
   instances on all held-out pixels and near the pixels the user changed.
3. **The guard and the finished model** (:func:`finalise`, :mod:`~napari_neuroedge.training.guard`): the kept
   model is chosen among the parent, the parent with recalibrated thresholds and the best validated checkpoint
   (with two runs: the mean of the two, each scored on the slices it never saw) interpolated with the parent,
   on Rand error and F1 together, block by block; a candidate must beat the
   parent's Rand error beyond the noise, or the parent is kept, re-labelled, and the outcome says so in words
   (the best fine-tuned candidate is left in the run folder as ``candidate.pt``). No optimiser state, the
   parent's context, thresholds recalibrated on the held-out pixels where they are enough. A cancel keeps the
   best validated fine-tuned candidate (never selected for the user), or says there is none.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import PARENT_WEIGHTS, AugmentConfig, FinetuneOptions, LossConfig, TrainConfig, from_dict, to_dict
from ..models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..progress import ProgressEvent
from .calibration import (SEED_THRESHOLDS, SEED_TIE_TOLERANCE, calibrate_thresholds,  # noqa: F401 (re-exported)
                           choose_seed_threshold, seed_threshold_sweep)
from .dataset import LabelledSlice
from .holdout import split_holdout  # noqa: F401 (re-exported: the service's split)


@dataclass
class FinetuneOutcome:
    """Filled in as the run goes, so a caller learns what was kept even when the run was cancelled."""

    path: Path | None = None
    cancelled: bool = False
    validated: bool = False
    best_metrics: dict[str, float] | None = None
    steps: int = 0
    threshold: float | None = None
    threshold_source: str = ""
    seed_threshold: float | None = None
    kept_metrics: dict[str, float] | None = None  # held-out metrics of the kept model (after interpolation)
    parent_metrics: dict[str, float] | None = None  # held-out metrics of the parent as it is (same keys)
    kept: str = ""  # "the parent", "the parent with recalibrated thresholds" or "step N [with w of the parent's ...]"
    parent_kept: bool = False  # the kept weights are the parent's: fine-tuning did not beat it
    parent_weight: float | None = None  # the kept model's share of the parent's weights (1 = the parent's)
    candidate: Path | None = None  # where the parent was kept: the best fine-tuned candidate, for the user to try
    notes: list[str] = field(default_factory=list)


def parent_recipe(parent: Checkpoint) -> tuple[LossConfig, AugmentConfig]:
    """The loss and augmentation the parent was trained with (the defaults where it does not say)."""
    if parent.train_config:
        try:
            prev = from_dict(TrainConfig, parent.train_config)
            return prev.loss, prev.augment
        except (TypeError, ValueError):
            pass
    return LossConfig(), AugmentConfig()


def local_augment(parent: AugmentConfig, crop: int) -> AugmentConfig:
    """The parent's augmentation for a fine-tune on the user's own slices: its geometric and contrast scheme at
    ``crop`` px, without the transfer augmentations (pixel size, gamma, blur, noise). Those prepare a released
    model for microscopes it has not seen; the user's slices come from the microscope the model is fitted to."""
    return dataclasses.replace(parent, crop=crop, scale_p=0.0, gamma_p=0.0, blur_p=0.0, noise_p=0.0)


def finetune_config(parent: Checkpoint, options: FinetuneOptions, has_replay: bool) -> TrainConfig:
    """The TrainConfig of a fine-tune of ``parent``: the same for the button and the CLI given the same options."""
    loss, augment = parent_recipe(parent)
    return TrainConfig(
        model=parent.arch, model_kwargs=dict(parent.arch_kwargs), lr_backbone=options.lr * options.backbone_lr_factor,
        lr_head=options.lr, batch=options.batch, steps=options.steps, val_every=options.val_every,
        seed=options.seed, device=options.device, threads=options.threads, precision=options.precision,
        loss=options.loss or loss, augment=local_augment(augment, options.crop), norm=parent.norm,
        replay_fraction=options.replay_fraction if has_replay else 0.0, corrected_weight=options.corrected_weight,
        select=options.select, time_limit_s=options.time_limit_s, val_tile=1024, ema_decay=options.ema_decay,
        val_tta=options.val_tta, keep_validated=options.keep_validated)


#: A corrected slice whose labelled pixels are less membrane than this is flagged as almost empty.
MIN_MEMBRANE_FRACTION = 0.01
#: A corrected slice with less of its area labelled (outside the ignore mask) than this is flagged.
MIN_LABELLED_FRACTION = 0.05


def describe_slice(label: np.ndarray, mask: np.ndarray | None = None,
                   corrected: np.ndarray | None = None) -> dict[str, Any]:
    """One slice's training data: ``pixels`` labelled (mask 1, or all), ``labelled_fraction`` of the slice,
    ``membrane_fraction`` of the labelled pixels, ``changed_fraction`` of them the user changed from the
    prediction (None when there was no prediction). ``label``, ``mask``, ``corrected``: (H, W), non-zero = yes."""
    keep = np.ones(label.shape, bool) if mask is None else np.asarray(mask) > 0
    labelled = int(keep.sum())
    membrane = float((np.asarray(label)[keep] > 0).mean()) if labelled else 0.0
    changed = (None if corrected is None else
               float((np.asarray(corrected)[keep] > 0).mean()) if labelled else 0.0)
    return {"pixels": labelled, "labelled_fraction": round(labelled / max(label.size, 1), 4),
            "membrane_fraction": round(membrane, 4),
            "changed_fraction": None if changed is None else round(changed, 4)}


def slice_warnings(name: str, row: dict[str, Any]) -> list[str]:
    """Why the training data of one slice (a :func:`describe_slice` row) looks wrong, as sentences."""
    out = []
    if row["labelled_fraction"] < MIN_LABELLED_FRACTION:
        out.append(f"{name}: only {row['labelled_fraction']:.1%} of it is labelled (the rest is ignored)")
    if row["membrane_fraction"] < MIN_MEMBRANE_FRACTION:
        out.append(f"{name}: almost no membrane labelled ({row['membrane_fraction']:.1%}); is it really corrected?")
    return out


def describe_row(name: Any, label: np.ndarray, mask: np.ndarray | None = None,
                 corrected: np.ndarray | None = None, **extra: Any) -> dict[str, Any]:
    """The :func:`describe_slice` row of one slice, with its ``slice`` name (and ``extra`` keys) first."""
    return {"slice": name, **extra, **describe_slice(label, mask, corrected)}


def rows_warnings(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The :func:`slice_warnings` of :func:`describe_row` rows, in order."""
    return [w for row in rows
            for w in slice_warnings(f"slice {'?' if row['slice'] is None else row['slice']}", row)]


def describe_data(slices: Sequence[LabelledSlice]) -> dict[str, Any]:
    """What a fine-tune will train on: one :func:`describe_row` per slice (with its ``slice`` and ``source``)
    and the :func:`slice_warnings` of all of them."""
    rows = [describe_row(sl.meta.get("slice"), sl.label, sl.mask, sl.corrected, source=sl.meta.get("source"))
            for sl in slices]
    return {"slices": rows, "warnings": rows_warnings(rows)}


#: A fine-tuned checkpoint and the slices it never trained on (its validation), one per fold.
Fold = tuple[Path, Sequence[LabelledSlice]]


def _children(folds: Sequence[Fold], parent: Checkpoint) -> tuple[list[Checkpoint], Checkpoint, str]:
    """(each fold's fine-tuned checkpoint, the model the user would get: their mean (a uniform soup of fine-tunes
    of one parent) or the one, its name); thresholds carried over from the parent until recalibrated."""
    from ..models.averaging import average_checkpoints

    children = []
    for src, _ in folds:
        child = load_checkpoint(src)
        child.optimizer, child.threshold, child.seed_threshold = None, parent.threshold, parent.seed_threshold
        children.append(child)
    if len(children) == 1:
        return children, children[0], f"step {children[0].step}"
    mean = average_checkpoints(children)
    soup = dataclasses.replace(children[-1], state_dict=mean.state_dict, optimizer=None,
                               step=sum(c.step for c in children))
    steps = " and ".join(f"{c.step}" for c in children)
    return children, soup, f"the mean of {len(children)} cross-fitted fine-tunes ({steps} steps)"


def _candidates(folds: Sequence[Fold], parent: Checkpoint, options: FinetuneOptions
                ) -> list[tuple[str, float, Checkpoint, list[Checkpoint]]]:
    """(name, parent weight, the model the user would get, each fold's model at that weight) of every fine-tuned
    candidate: the folds' checkpoints interpolated with the parent at each of ``config.PARENT_WEIGHTS`` (and the
    form's ``parent_weight``). A fold's model is scored on its own validation slices; the user gets the mean."""
    from ..models.averaging import interpolate_towards

    weights = sorted({*PARENT_WEIGHTS, float(options.parent_weight)} - {1.0})
    children, soup, label = _children(folds, parent)
    out = []
    for w in weights:
        def mix(c: Checkpoint) -> Checkpoint:
            return interpolate_towards(parent, c, w) if w > 0 else c

        name = label + (f" with {w:g} of the parent's weights" if w > 0 else "")
        out.append((name, w, mix(soup), [mix(c) for c in children]))
    return out


def finalise(folds: Sequence[Fold], dest: Path, parent: Checkpoint, options: FinetuneOptions,
             provenance: dict[str, Any], outcome: FinetuneOutcome, cancelled: bool = False,
             run_dir: Path | None = None) -> Path:
    """Write the user's model to ``dest``: the guard's choice (:func:`~napari_neuroedge.training.guard.choose`)
    among the parent and the fine-tuned candidates (:func:`_candidates`: each fold's checkpoint, interpolated with
    the parent, scored on the slices that fold never trained on; pooled over the folds), without optimiser state,
    with the parent's context and its thresholds (recalibrated on the held-out pixels, or carried over), labelled
    with what was kept and why. Without validation slices the last fold's weights are kept, chosen on nothing.
    ``cancelled``: the parent is never the answer (the user keeps it anyway); the best fine-tuned candidate is
    written, and the notes say whether it beats the parent. ``run_dir``: where a rejected candidate is saved
    (default: beside the first fold's checkpoint)."""
    from . import guard

    run_dir = Path(folds[0][0]).parent if run_dir is None else Path(run_dir)
    val = [s for _, v in folds for s in v]
    tta, device, precision = options.val_tta, options.device, options.precision
    if not val:
        ckpt = load_checkpoint(folds[-1][0])
        ckpt.optimizer, ckpt.context = None, parent.context
        ckpt.threshold, ckpt.seed_threshold = parent.threshold, parent.seed_threshold
        outcome.kept, outcome.parent_weight = f"step {ckpt.step}", 0.0
        return _write(ckpt, dest, {**provenance, "kept": outcome.kept},
                      f"carried over from the parent ({parent.threshold:g})", outcome)
    parent_probs = guard.held_out_probabilities(parent, val, device, precision, tta)
    base = guard.evaluate("the parent", 1.0, parent, parent_probs, val, parent.seed_threshold, calibrate=False)
    cands = [guard.evaluate("the parent with recalibrated thresholds", 1.0, parent, parent_probs, val,
                            parent.seed_threshold, calibrate=True)] if not cancelled else []
    for name, w, ckpt, mixes in _candidates(folds, parent, options):
        probs = [p for m, (_, v) in zip(mixes, folds) for p in guard.held_out_probabilities(m, v, device, precision,
                                                                                              tta)]
        cands.append(guard.evaluate(name, w, ckpt, probs, val, parent.seed_threshold, calibrate=True))
    verdict = guard.choose(base, cands)
    outcome.parent_metrics = base.metrics
    if cancelled and verdict.parent_kept and verdict.runner_up is not None:
        verdict = dataclasses.replace(verdict, kept=verdict.runner_up, parent_kept=False)
        outcome.notes.append("the kept checkpoint did not beat the parent on the held-out pixels")
    elif verdict.parent_kept and verdict.runner_up is not None:
        outcome.candidate = _write_candidate(verdict.runner_up, run_dir / "candidate.pt", parent, provenance)
    kept = verdict.kept
    outcome.notes.extend(guard.describe(verdict, str(parent.provenance.get("name", "parent")),
                                        str(outcome.candidate) if outcome.candidate else None)
                         if not cancelled else [])
    outcome.kept = kept.name
    outcome.parent_kept, outcome.parent_weight = verdict.parent_kept, kept.parent_weight
    outcome.seed_threshold, outcome.kept_metrics = kept.seed_threshold, kept.metrics
    labelled = sum(int(s.mask.sum()) if s.mask is not None else s.label.size for s in val)
    how = (f"recalibrated on {labelled} held-out corrected pixels" if kept.threshold_sweep else
           f"carried over from the parent ({parent.threshold:g})")
    if not kept.threshold_sweep and kept is not base and options.recalibrate_threshold:
        outcome.notes.append(f"membrane threshold carried over from the parent: only {labelled} held-out pixels")
    ckpt = dataclasses.replace(kept.ckpt, optimizer=None, context=parent.context)
    if not options.recalibrate_threshold:
        ckpt.threshold, ckpt.seed_threshold = parent.threshold, parent.seed_threshold
        outcome.seed_threshold = parent.seed_threshold
        how = f"carried over from the parent ({parent.threshold:g})"
    prov = {**provenance, "kept": outcome.kept, "parent_kept": verdict.parent_kept,
            "parent_weight": kept.parent_weight, "guard": {"evidence": verdict.region, "candidates": verdict.table},
            "kept_metrics": kept.metrics, "parent_metrics": base.metrics,
            "threshold_sweep": kept.threshold_sweep, "seed_threshold_sweep": kept.seed_sweep}
    if 0 < kept.parent_weight < 1:
        prov["weights"] = (f"{kept.parent_weight:g} x parent + {1 - kept.parent_weight:g} x fine-tuned (WiSE-FT, "
                           "the weight chosen on the held-out pixels)")
    if len(folds) > 1 and not verdict.parent_kept:
        prov["cross_fitted"] = (f"the mean of {len(folds)} fine-tunes, each trained on some corrected slices and "
                                "validated on the others")
    if verdict.parent_kept:
        prov["weights"] = "the parent's (fine-tuning did not beat it on the held-out pixels)"
        ckpt.provenance = {**parent.provenance, **_loop_provenance(folds[-1][0])}
    return _write(ckpt, dest, prov, how, outcome)


def _loop_provenance(src: Path) -> dict[str, Any]:
    """The training run's own provenance (data, validation, init) from one of its checkpoints."""
    return dict(load_checkpoint(src).provenance)


def _write(ckpt: Checkpoint, dest: Path, provenance: dict[str, Any], how: str, outcome: FinetuneOutcome) -> Path:
    ckpt.provenance = {**ckpt.provenance, **provenance, "threshold_source": how}
    outcome.threshold, outcome.threshold_source = ckpt.threshold, how
    if outcome.seed_threshold is None:
        outcome.seed_threshold = ckpt.seed_threshold
    save_checkpoint(ckpt, dest)
    outcome.path = dest
    return dest


def _write_candidate(ev: Any, path: Path, parent: Checkpoint, provenance: dict[str, Any]) -> Path:
    """Save the guard's best rejected candidate (atomically, next to the run's resume files)."""
    from ..io.atomic import unique_path

    path = unique_path(path)
    ckpt = dataclasses.replace(ev.ckpt, optimizer=None, context=parent.context)
    ckpt.provenance = {**ckpt.provenance, **provenance, "name": path.stem, "kept": ev.name,
                       "rejected": "did not beat the parent on the held-out pixels", "kept_metrics": ev.metrics}
    save_checkpoint(ckpt, path)
    return path


def _fold_events(fit: Generator[ProgressEvent, None, Any], fold: int, folds: int, offset: int
                 ) -> Generator[ProgressEvent, None, Any]:
    """The events of fold ``fold`` (0-based) of ``folds`` as one run's: steps counted on from ``offset``, the total
    guessed as ``folds`` such runs, ``info["fold"]`` 1-based. Closing this closes ``fit`` (its run saves last.pt)."""
    try:
        while True:
            try:
                e = next(fit)
            except StopIteration as stop:
                return stop.value
            total = offset + e.total + (folds - 1 - fold) * e.total
            yield ProgressEvent(offset + e.done, total, e.stage, {**e.info, "fold": fold + 1, "folds": folds}, e.unit)
    finally:
        fit.close()


def iter_finetune(parent: Checkpoint, slices: Sequence[LabelledSlice], run_dir: str | Path, dest: str | Path, *,
                  options: FinetuneOptions | None = None, replay: Sequence[LabelledSlice] = (),
                  val: Sequence[LabelledSlice] | None = None, provenance: dict[str, Any] | None = None,
                  outcome: FinetuneOutcome | None = None) -> Generator[ProgressEvent, None, FinetuneOutcome]:
    """Fine-tune ``parent`` on labelled ``slices``; yields the training loop's events; returns the outcome.

    Validation: ``val`` (the CLI's ``--val-data``) when given; else, with two corrected slices or more and
    ``options.cross_slices``, whole slices (:func:`~napari_neuroedge.training.holdout.slice_folds`: two runs of
    half the time each, every slice validated on by the run that never saw it; their events follow on as one
    run's, ``info["fold"]`` saying which); else held-out blocks of each slice
    (:func:`~napari_neuroedge.training.holdout.split_holdout`). Each run's first event is the parent's
    validation at its step 0 (``info["init"]``). On a cancel (the generator is closed) the best validated
    fine-tuned candidate is kept as ``DEST-cancelled.pt`` and ``outcome`` says so (or that there was none).
    """
    from ..io.atomic import unique_path
    from .holdout import slice_folds
    from .loop import iter_fit

    options = options or FinetuneOptions()
    outcome = outcome if outcome is not None else FinetuneOutcome()
    run_dir, dest = Path(run_dir), Path(dest)
    if not slices:
        raise ValueError("no corrected slices to fine-tune on")
    info = describe_data(slices)
    outcome.notes.extend(info["warnings"])
    folds = slice_folds(slices) if val is None and options.cross_slices and options.holdout > 0 else []
    if folds:
        how = (f"whole slices: {len(folds)} runs, each trained on some corrected slices and validated on the others "
               "(cross-fitting)")
    elif val is None:
        train, val = split_holdout(slices, options.holdout)
        how = ("held-out blocks (%d%% of each corrected slice's area, spread over it)" % round(100 * options.holdout)
               if val else "none")
        folds = [(train, val)]
    else:
        how = "caller's validation slices"
        folds = [(list(slices), list(val))]
    if not folds[0][1]:
        outcome.notes.append("no validation: the model is the last step's, chosen on nothing")
    cfg = finetune_config(parent, options, bool(replay))
    if len(folds) > 1:  # the runs share the clock and the step budget
        cfg = dataclasses.replace(cfg, time_limit_s=cfg.time_limit_s / len(folds),
                                  steps=max(1, -(-cfg.steps // len(folds))))
    prov = {"parent": parent.provenance.get("name"), "parent_threshold": parent.threshold,
            "validation": how, "data_summary": info, "finetune_options": to_dict(options), **(provenance or {})}
    done: list[tuple[Any, Sequence[LabelledSlice]]] = []  # (FitResult, its validation) of the finished runs
    fold_dirs = [run_dir] if len(folds) == 1 else [run_dir / f"fold-{k + 1}" for k in range(len(folds))]
    offset = 0
    try:
        for k, ((train, fold_val), fold_dir) in enumerate(zip(folds, fold_dirs)):
            fit = iter_fit(cfg, train, fold_val, fold_dir, init=parent, replay=replay,
                           provenance={**prov, **({"fold": k + 1} if len(folds) > 1 else {})}, validate_init=True)
            result = yield from (_fold_events(fit, k, len(folds), offset) if len(folds) > 1 else fit)
            done.append((result, fold_val))
            offset += result.steps
    except GeneratorExit:
        outcome.cancelled = True
        validated = [(r.best, v) for r, v in done if r.best is not None]
        if len(done) < len(folds) and (fold_dirs[len(done)] / "best.pt").exists():
            validated.append((fold_dirs[len(done)] / "best.pt", folds[len(done)][1]))
        if validated:
            kept = unique_path(dest.with_name(f"{dest.stem}-cancelled.pt"))
            outcome.validated = True
            finalise(validated, kept, parent, options, {**prov, "name": kept.stem, "cancelled": True}, outcome,
                     cancelled=True, run_dir=run_dir)
        else:
            outcome.notes.append("cancelled before the first validation: no model was kept")
        raise
    outcome.steps = sum(r.steps for r, _ in done)
    scored = [r.best_metrics for r, _ in done if r.best_metrics is not None]
    outcome.best_metrics = scored[-1] if scored else None
    outcome.validated = all(r.best is not None for r, _ in done)
    sources: list[Fold] = [(r.best or r.last, v) for r, v in done]
    finalise(sources, dest, parent, options, {**prov, "name": dest.stem, "steps_done": outcome.steps,
                                              "best_metrics": outcome.best_metrics,
                                              "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}, outcome,
             run_dir=run_dir)
    return outcome
