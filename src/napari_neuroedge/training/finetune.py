"""The one fine-tune service: the recipe, the held-out validation, the checkpoint choice and the finished model.

The napari Fine-tune button and ``neuroedge finetune`` both build a :class:`FinetuneOptions` (the button's form
and the CLI's flags map onto the same fields of :class:`~napari_neuroedge.config.FinetuneOptions`, with the
same defaults) and run :func:`iter_finetune`:

1. **Recipe** (:func:`finetune_config`): the parent's loss and augmentation, the parent's normalisation, a
   short schedule that follows the clock (``time_limit_s``), corrected pixels up-weighted, replay of the
   parent's data when given. bf16/fp16 autocast where the hardware has it (``precision="auto"``).
2. **Honest validation** (:func:`split_holdout`): a band of ``holdout`` of each corrected slice's rows (the
   bottom rows) is cut off before training and never trained on; validation measures boundary F1 and the Rand
   error of the instances there, and the checkpoint is chosen on both (``select="f1-rand"``). Corrected slices
   smaller than ``MIN_VAL_ROWS`` rows of validation are flagged as weak validation.
3. **The finished model** (:func:`finalise`): no optimiser state (resume files stay in the run folder), the
   parent's context, and a membrane threshold recalibrated on the held-out pixels (or the parent's, labelled
   as carried over, where the held-out pixels are too few). A cancel keeps the last *validated* checkpoint, or
   says there is none.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import AugmentConfig, FinetuneOptions, LossConfig, TrainConfig, from_dict, to_dict
from ..models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..progress import ProgressEvent
from .dataset import LabelledSlice

#: Validation bands with fewer rows than this (per slice) make validation weak: the widget says so.
MIN_VAL_ROWS = 64
#: Held-out labelled pixels below which the thresholds are carried over from the parent, not recalibrated.
MIN_CALIBRATION_PIXELS = 50_000
#: Instance seed thresholds tried on the held-out pixels (lowest mean adapted Rand error wins).
SEED_THRESHOLDS = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45)


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
        select="f1-rand", time_limit_s=options.time_limit_s, val_tile=1024, ema_decay=options.ema_decay,
        val_tta=options.val_tta, keep_validated=options.keep_validated)


def _cut(sl: LabelledSlice, rows: slice, part: str) -> LabelledSlice:
    def c(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.ascontiguousarray(a[rows])

    return LabelledSlice(c(sl.image), c(sl.label), c(sl.mask), c(sl.corrected), {**sl.meta, "part": part,
                                                                                   "rows": [rows.start, rows.stop]})


def split_holdout(slices: Sequence[LabelledSlice], fraction: float) -> tuple[list[LabelledSlice], list[LabelledSlice]]:
    """(train, val): the top ``1 - fraction`` of each slice's rows to train on, the bottom rows to validate on.

    The two parts share no pixel (the training part's crops cannot reach the held-out rows); ``fraction`` 0
    gives no validation.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {fraction}")
    train, val = [], []
    for sl in slices:
        h = sl.image.shape[0]
        n_val = int(round(h * fraction))
        if n_val == 0:
            train.append(sl)
            continue
        if h - n_val < 32:
            raise ValueError(f"slice {sl.meta.get('slice', '?')} is {h} px high: too small to hold out "
                             f"{fraction:.0%} of it for validation")
        train.append(_cut(sl, slice(0, h - n_val), "train"))
        val.append(_cut(sl, slice(h - n_val, h), "validation"))
    return train, val


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


#: Held-out Rand errors within this fraction of the lowest (or 1e-4) are ties: a few hundred rows cannot tell them
#: apart, and moving the parent's seed threshold on such a difference measured worse on other slices (VNC: 0.4
#: won by 1e-6 over 0.3 on the held-out band, and merged more neurons on slices 10-14).
SEED_TIE_TOLERANCE = 0.02


def choose_seed_threshold(rand_by_seed: dict[float, float], parent_seed: float) -> float:
    """The seed threshold with the lowest held-out Rand error, where those within :data:`SEED_TIE_TOLERANCE` of
    the lowest count as ties, won by the one nearest the parent's ``parent_seed``."""
    best = min(rand_by_seed.values())
    tied = [t for t, e in rand_by_seed.items() if e <= best + max(SEED_TIE_TOLERANCE * best, 1e-4)]
    return min(tied, key=lambda t: (abs(t - parent_seed), t))


def seed_threshold_sweep(probs: Sequence[np.ndarray], val: Sequence[LabelledSlice],
                         thresholds: Sequence[float] = SEED_THRESHOLDS) -> dict[float, float]:
    """{seed threshold: mean adapted Rand error of the watershed instances on the held-out ``val`` slices}."""
    from ..inference.postprocess import instances_from_probability
    from ..metrics import instances_from_membrane, rand_error

    gts = [instances_from_membrane(s.label) for s in val]
    return {float(t): float(np.mean([rand_error(instances_from_probability(p, t), g) for p, g in zip(probs, gts)]))
            for t in thresholds}


def calibrate_thresholds(probs: Sequence[np.ndarray], slices: Sequence[LabelledSlice], parent_seed: float
                         ) -> tuple[float, float, dict[float, float], dict[float, float]]:
    """(membrane threshold, seed threshold, pixel error by threshold, Rand error by seed threshold) of the
    probabilities ``probs`` against the labels of ``slices`` (only their labelled pixels): the membrane threshold
    with the lowest pixel error, the seed threshold by :func:`choose_seed_threshold` (ties go to ``parent_seed``)."""
    from .calibration import choose_threshold, pixel_error_by_threshold

    errors = pixel_error_by_threshold(np.concatenate([p.ravel() for p in probs]),
                                      np.concatenate([s.label.ravel() for s in slices]),
                                      mask=np.concatenate([(s.mask if s.mask is not None
                                                            else np.ones_like(s.label)).ravel() for s in slices]))
    seeds = seed_threshold_sweep(probs, slices)
    return choose_threshold(errors), choose_seed_threshold(seeds, parent_seed), errors, seeds


def _held_out_probabilities(ckpt: Checkpoint, val: Sequence[LabelledSlice],
                            options: FinetuneOptions) -> list[np.ndarray]:
    """The model's boundary probability of each held-out slice (already normalised), one model for all."""
    from ..inference.device import resolve_device
    from ..inference.pipeline import PredictionRequest, predict_probability
    from ..inference.predict import TorchPredictor
    from .loop import _IDENTITY_NORM

    predictor = TorchPredictor(ckpt.build(), resolve_device(options.device), precision=options.precision)
    request = PredictionRequest(predictor=predictor, norm=_IDENTITY_NORM)
    return [predict_probability(s.image, request) for s in val]


def _kept_metrics(ckpt: Checkpoint, probs: Sequence[np.ndarray], val: Sequence[LabelledSlice]) -> dict[str, float]:
    """Held-out pixel error, boundary F1 (2 px) and Rand error of the model as it is kept (weights after the
    interpolation, its own thresholds), from its held-out ``probs``: what the user gets, not the checkpoint
    validation chose."""
    from ..inference.postprocess import instances_from_probability, membrane_from_probability
    from .loop import mean_scores, score_slice

    return mean_scores([score_slice(membrane_from_probability(prob, ckpt.threshold),
                                    instances_from_probability(prob, ckpt.seed_threshold), sl)
                        for prob, sl in zip(probs, val)])


def finalise(src: Path, dest: Path, parent: Checkpoint, val: Sequence[LabelledSlice], options: FinetuneOptions,
             provenance: dict[str, Any], outcome: FinetuneOutcome) -> Path:
    """Write the user's model: ``src``'s weights without optimiser state, the parent's context, the membrane
    threshold (lowest pixel error) and the instance seed threshold (lowest Rand error) recalibrated on the
    held-out ``val`` pixels, or both carried over from the parent, and labelled so."""
    ckpt = load_checkpoint(src)
    ckpt.optimizer = None
    if options.parent_weight > 0:
        from ..models.averaging import interpolate_towards

        ckpt = interpolate_towards(parent, ckpt, options.parent_weight)
        provenance = {**provenance, "parent_weight": options.parent_weight,
                      "weights": f"{options.parent_weight:g} x parent + {1 - options.parent_weight:g} x fine-tuned "
                                 "(WiSE-FT)"}
    ckpt.context = parent.context
    threshold, how = parent.threshold, f"carried over from the parent ({parent.threshold:g})"
    labelled = sum(int(s.mask.sum()) if s.mask is not None else s.label.size for s in val)
    probs = _held_out_probabilities(ckpt, val, options) if val else []  # once: calibration and kept metrics
    if options.recalibrate_threshold and labelled >= MIN_CALIBRATION_PIXELS:
        threshold, ckpt.seed_threshold, errors, seeds = calibrate_thresholds(probs, val, parent.seed_threshold)
        how = f"recalibrated on {labelled} held-out corrected pixels"
        provenance = {**provenance, "threshold_sweep": errors, "seed_threshold_sweep": seeds}
    else:
        ckpt.seed_threshold = parent.seed_threshold
        if options.recalibrate_threshold:
            outcome.notes.append(f"thresholds carried over from the parent: only {labelled} held-out pixels")
    ckpt.threshold = threshold
    outcome.seed_threshold = ckpt.seed_threshold
    if val:
        outcome.kept_metrics = _kept_metrics(ckpt, probs, val)
        provenance = {**provenance, "kept_metrics": outcome.kept_metrics}
    ckpt.provenance = {**ckpt.provenance, **provenance, "threshold_source": how}
    outcome.threshold, outcome.threshold_source = threshold, how
    save_checkpoint(ckpt, dest)
    outcome.path = dest
    return dest


def iter_finetune(parent: Checkpoint, slices: Sequence[LabelledSlice], run_dir: str | Path, dest: str | Path, *,
                  options: FinetuneOptions | None = None, replay: Sequence[LabelledSlice] = (),
                  val: Sequence[LabelledSlice] | None = None, provenance: dict[str, Any] | None = None,
                  outcome: FinetuneOutcome | None = None) -> Generator[ProgressEvent, None, FinetuneOutcome]:
    """Fine-tune ``parent`` on labelled ``slices``; yields the training loop's events; returns the outcome.

    ``val`` replaces the held-out bands with slices of the caller's (the CLI's ``--val-data``). On a cancel
    (the generator is closed) the last validated checkpoint is kept as ``DEST-cancelled.pt`` and ``outcome``
    says so (or that there was none).
    """
    from ..io.atomic import unique_path
    from .loop import iter_fit

    options = options or FinetuneOptions()
    outcome = outcome if outcome is not None else FinetuneOutcome()
    run_dir, dest = Path(run_dir), Path(dest)
    if not slices:
        raise ValueError("no corrected slices to fine-tune on")
    info = describe_data(slices)
    outcome.notes.extend(info["warnings"])
    if val is None:
        train, val = split_holdout(slices, options.holdout)
        if val and min(s.image.shape[0] for s in val) < MIN_VAL_ROWS:
            outcome.notes.append(f"validation is weak: the held-out bands are under {MIN_VAL_ROWS} rows")
    else:
        train = list(slices)
    if not val:
        outcome.notes.append("no validation: the model is the last step's, chosen on nothing")
    cfg = finetune_config(parent, options, bool(replay))
    prov = {"parent": parent.provenance.get("name"), "parent_threshold": parent.threshold,
            "validation": ("held-out bottom %d%% of each corrected slice" % round(100 * options.holdout)
                           if val and options.holdout else "caller's validation slices" if val else "none"),
            "data_summary": info, "finetune_options": to_dict(options), **(provenance or {})}
    fit = iter_fit(cfg, train, val, run_dir, init=parent, replay=replay, provenance=prov)
    try:
        result = yield from fit
    except GeneratorExit:
        outcome.cancelled = True
        best = run_dir / "best.pt"
        if best.exists():
            kept = unique_path(dest.with_name(f"{dest.stem}-cancelled.pt"))
            outcome.validated = True
            finalise(best, kept, parent, val, options, {**prov, "name": kept.stem, "cancelled": True}, outcome)
        else:
            outcome.notes.append("cancelled before the first validation: no model was kept")
        raise
    outcome.steps, outcome.best_metrics = result.steps, result.best_metrics
    outcome.validated = result.best is not None
    src = result.best or result.last
    finalise(src, dest, parent, val, options, {**prov, "name": dest.stem, "steps_done": result.steps,
                                               "best_metrics": result.best_metrics, "selected_from": src.name,
                                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}, outcome)
    return outcome
