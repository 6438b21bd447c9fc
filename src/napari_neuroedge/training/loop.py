"""The training / fine-tuning loop as a generator: yields progress after every step, stops cleanly on cancel.

:func:`iter_fit` samples augmented crops from labelled slices (optionally mixed with a replay set), optimises
the combined loss with Adam (discriminative learning rates for backbone and head, poly schedule), validates
every ``val_every`` steps on held-out slices (boundary F1 at 2 px and adapted Rand error of the watershed
instances) and keeps ``best.pt`` / ``last.pt`` in a run folder. Closing the generator (a cancel) saves a valid
``last.pt`` first.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.atomic import replace_atomically
from ..config import SEED_THRESHOLD, TileConfig, TrainConfig, TTAConfig, to_dict
from ..inference.device import resolve_device
from ..inference.precision import autocast, resolve_precision
from ..inference.pipeline import OutputPlan, PredictionRequest, run
from ..inference.predict import TorchPredictor
from ..models.checkpoint import Checkpoint, make_checkpoint, save_checkpoint
from ..models.registry import build_model, resolve_arch
from ..progress import ProgressEvent
from .augment import augment_sample
from .dataset import LabelledSlice, loss_targets
from .losses import CombinedLoss
from .scoring import mean_scores, score_slice


@dataclass
class FitResult:
    """Where the run's checkpoints are and what validation measured."""

    run_dir: Path
    last: Path
    best: Path | None
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best_metrics: dict[str, float] | None = None
    init_metrics: dict[str, float] | None = None  # the starting model's, validated at step 0 (``validate_init``)


def validate(model: torch.nn.Module, val: Sequence[LabelledSlice], device: torch.device, tile: int = 256,
             threshold: float = 0.5, tta: int = 1, precision: str = "auto",
             seed_threshold: float = SEED_THRESHOLD) -> dict[str, float]:
    """Mean pixel error, boundary P/R/F1 (2 px) and adapted Rand error over the validation slices, each
    predicted whole and scored on its held-out pixels (its mask), with the ``*_changed`` measures near the user's
    changes where the slices know them (:func:`~napari_neuroedge.training.scoring.score_slice`).

    ``tta`` > 1 validates the prediction averaged over that many flips/rotations (``TTAConfig.n``), as it will
    be used; it costs ``tta`` times the forward passes.
    """
    predictor = TorchPredictor(model, device, tta=TTAConfig(n=tta), precision=precision)
    request = PredictionRequest(predictor=predictor, tile=TileConfig(tile=tile, batch=4), norm=_IDENTITY_NORM,
                                threshold=threshold, seed_threshold=seed_threshold)
    was_training = model.training
    model.eval()
    rows = []
    for sl in val:
        prob = np.zeros(sl.image.shape, np.float32)
        pred = np.zeros(sl.image.shape, np.uint8)
        cells = np.zeros(sl.image.shape, np.uint32)
        run(sl.image, request, OutputPlan(probability=prob, membranes=pred, instances=cells))
        rows.append(score_slice(pred, cells, sl))
    model.train(was_training)
    return mean_scores(rows)


# validation slices are stored already normalised: identity normalisation (dtype float32 -> scale 1)
from ..config import NormConfig  # noqa: E402

_IDENTITY_NORM = NormConfig(mode="meanstd", mean=0.0, std=1.0)

#: Under a time limit, validation takes at most about this share of the clock: after the first validated
#: checkpoint, a due validation is skipped until training has run (1 - share) / share times the last one's
#: duration (whole 1024^2 held-out slices take seconds to validate on 2 cores). The final step is always validated.
VAL_SHARE = 0.2
_VAL_WAIT = (1 - VAL_SHARE) / VAL_SHARE


def ema_weight(decay: float, n_averaged: int) -> float:
    """Weight of the running average at update ``n_averaged`` (>= 1): ``min(decay, (1 + n) / (10 + n))``.

    The warm-up keeps a from-scratch run's average from being dominated by its random initial weights.
    """
    return min(decay, (1.0 + n_averaged) / (10.0 + n_averaged))


def _ema_of(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """torch's AveragedModel keeping an exponential moving average of ``model``'s weights and BN statistics."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        w = ema_weight(decay, int(n_averaged))
        for avg, cur in zip(averaged, current):
            if avg.is_floating_point():
                avg.lerp_(cur, 1.0 - w)
            else:  # counters such as BatchNorm's num_batches_tracked
                avg.copy_(cur)

    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def _score(metrics: dict[str, float], select: str) -> float:
    """Higher is better. ``f1-rand`` adds the same difference near the user's changes where there are any;
    ``f1-near`` is boundary F1 on all held-out pixels plus near the changes, no Rand error: during the loop the
    instances use the starting model's seed threshold, which a model that draws thinner membranes floods
    through, so their Rand error ranks steps by that threshold's fit rather than by the boundaries (the guard
    then recalibrates the seed threshold and weighs Rand error for the kept model)."""
    if select == "f1":
        return metrics["f1"]
    if select == "f1-near":
        return metrics["f1"] + metrics.get("f1_changed", 0.0)
    if select == "rand":
        return -metrics["rand_error"]
    if select == "f1-rand":
        changed = metrics.get("f1_changed", 0.0) - metrics.get("rand_error_changed", 0.0)
        return metrics["f1"] - metrics["rand_error"] + changed
    raise ValueError(f"unknown selection score {select!r}; expected f1, rand, f1-rand or f1-near")


class CropSampler:
    """Draws augmented training crops; a ``replay_fraction`` of them from the replay slices."""

    def __init__(self, train: Sequence[LabelledSlice], cfg: TrainConfig, replay: Sequence[LabelledSlice] = (),
                 rng: np.random.Generator | None = None) -> None:
        if not train:
            raise ValueError("no training slices")
        self.cfg = cfg
        self.rng = rng or np.random.default_rng(cfg.seed)
        self.train = [loss_targets(s, cfg.loss, cfg.corrected_weight) for s in train]
        self.replay = [loss_targets(s, cfg.loss, 1.0) for s in replay]
        keys = [set(m) for m in self.train + self.replay]
        self.keys = sorted(set.intersection(*keys))

    def sample(self) -> dict[str, np.ndarray]:
        use_replay = bool(self.replay) and self.rng.random() < self.cfg.replay_fraction
        pool = self.replay if use_replay else self.train
        maps = pool[int(self.rng.integers(len(pool)))]
        return augment_sample({k: maps[k] for k in self.keys}, self.rng, self.cfg.augment)

    def batch(self, device: torch.device) -> dict[str, torch.Tensor]:
        samples = [self.sample() for _ in range(self.cfg.batch)]
        return {k: torch.from_numpy(np.stack([np.asarray(s[k], np.float32) for s in samples])[:, None]).to(device)
                for k in samples[0]}


def _replace_checkpoint(ckpt: Checkpoint, path: Path) -> None:
    """Save a run-folder checkpoint, atomically replacing the run's own previous one."""
    replace_atomically(path, lambda tmp: save_checkpoint(ckpt, tmp, write_json=False))


def iter_fit(cfg: TrainConfig, train: Sequence[LabelledSlice], val: Sequence[LabelledSlice], run_dir: str | Path, *,
             init: Checkpoint | None = None, replay: Sequence[LabelledSlice] = (), resume: Checkpoint | None = None,
             provenance: dict[str, Any] | None = None, validate_init: bool = False
             ) -> Generator[ProgressEvent, None, FitResult]:
    """Train per ``cfg``; yields ProgressEvent(step, steps, "train", {loss, terms, lr, [val metrics]}).

    ``init`` starts from a checkpoint's weights (fine-tuning; its architecture wins over ``cfg.model``);
    ``resume`` continues an interrupted run (weights, optimiser state and step). With ``cfg.ema_decay`` > 0
    the checkpoints hold the moving average of the weights (what prediction should use); a resumed run
    continues training from those averaged weights. ``run_dir`` receives
    ``last.pt``, ``best.pt``, ``log.jsonl`` and ``config.json`` (and ``step-NNNNNN.pt`` at each validation
    with ``cfg.keep_validated``). Under ``cfg.time_limit_s`` validation is throttled to :data:`VAL_SHARE` of the
    clock. With ``validate_init`` and ``val``, the starting model is validated first
    with the same measures: the first event is step 0 with ``{"step": 0, "val": metrics, "init": True}`` (no
    loss), and :attr:`FitResult.init_metrics` holds them. Validation uses the starting checkpoint's membrane
    and seed thresholds (the defaults from scratch), so every point of the curve is measured alike.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    start = resume or init
    if start is not None:
        arch, arch_kwargs = start.arch, dict(start.arch_kwargs)
        model = start.build()
        norm = start.norm
    else:
        arch, arch_kwargs = resolve_arch(cfg.model, cfg.model_kwargs)
        model = build_model(arch, **arch_kwargs)
        norm = cfg.norm
    model.to(device).train()
    ema = _ema_of(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    served = ema.module if ema is not None else model  # the weights validated and saved
    groups = model.param_groups() if hasattr(model, "param_groups") else {"head": list(model.parameters())}
    lrs = {"backbone": cfg.lr_backbone, "head": cfg.lr_head}
    opt = torch.optim.Adam([{"params": ps, "lr": lrs[name], "name": name} for name, ps in groups.items() if ps],
                           weight_decay=cfg.weight_decay)
    step0 = 0
    if resume is not None:
        step0 = resume.step
        if resume.optimizer is not None:
            opt.load_state_dict(resume.optimizer)
    base_lrs = [g["lr"] if resume is None else lrs[g["name"]] for g in opt.param_groups]
    loss_fn = CombinedLoss(cfg.loss)
    precision = resolve_precision(cfg.precision if cfg.amp else "fp32", device)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    sampler = CropSampler(train, cfg, replay)
    cfg_dict = to_dict(cfg)
    (run_dir / "config.json").write_text(json.dumps(cfg_dict, indent=2))
    prov = {"train_slices": [s.meta for s in train][:200], "val_slices": [s.meta for s in val][:200],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "device": str(device), "precision": precision,
            "init": (init.provenance.get("name") if init is not None else None), **(provenance or {})}
    history: list[dict[str, Any]] = []
    best_score, best_metrics, init_metrics = -math.inf, None, None
    thresholds = ({"threshold": start.threshold, "seed_threshold": start.seed_threshold} if start is not None
                  else {})
    last, best = run_dir / "last.pt", run_dir / "best.pt"
    log = open(run_dir / "log.jsonl", "a")
    step = step0

    def checkpoint(extra: dict[str, Any]) -> Checkpoint:
        return make_checkpoint(served, arch, arch_kwargs, norm, cfg_dict, {**prov, **extra}, step, opt.state_dict(),
                               context=start.context if start is not None else 0)  # the architecture's, carried over

    finished = False
    saved_step = step0
    try:
        t0 = time.perf_counter()
        clock = time.process_time if cfg.time_clock == "cpu" else time.perf_counter
        c0 = clock()

        def fraction() -> float:
            frac = step / max(cfg.steps, 1)
            if cfg.time_limit_s > 0:
                frac = max(frac, (clock() - c0) / cfg.time_limit_s)
            return min(frac, 1.0)

        val_cost, val_end = 0.0, time.perf_counter()
        if validate_init and val and resume is None:
            init_metrics = validate(served, val, device, cfg.val_tile, tta=cfg.val_tta, precision=precision,
                                    **thresholds)
            val_end = time.perf_counter()
            val_cost = val_end - t0
            info0 = {"step": step, "val": init_metrics, "init": True, "elapsed_s": val_cost}
            history.append(info0)
            log.write(json.dumps(info0) + "\n")
            log.flush()
            yield ProgressEvent(step, max(cfg.steps, 1), "train", info0, unit="steps")
        frac = fraction()
        while frac < 1.0:
            factor = max(0.0, 1.0 - frac) ** cfg.poly_power
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * factor
            batch = sampler.batch(device)
            with autocast(precision, device):
                if hasattr(model, "forward_train"):
                    outs = model.forward_train(batch["image"])
                    loss, terms = loss_fn(outs["fused"], batch)
                    for side in outs.get("sides", []):
                        loss = loss + cfg.side_weight * loss_fn(side, batch)[0] / max(len(outs["sides"]), 1)
                else:
                    loss, terms = loss_fn(model(batch["image"]), batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            frac = fraction()
            info: dict[str, Any] = {"step": step, "loss": float(loss.item()), "terms": terms,
                                    "lr": opt.param_groups[-1]["lr"], "elapsed_s": time.perf_counter() - t0}
            due = step % cfg.val_every == 0 and (cfg.time_limit_s <= 0 or best_metrics is None or
                                                  time.perf_counter() - val_end >= val_cost * _VAL_WAIT)
            if val and (due or frac >= 1.0):
                v0 = time.perf_counter()
                metrics = validate(served, val, device, cfg.val_tile, tta=cfg.val_tta, precision=precision,
                                   **thresholds)
                val_end = time.perf_counter()
                val_cost = val_end - v0
                info["val"] = metrics
                validated = checkpoint({"val": metrics})  # one copy of the weights for every file below
                if cfg.keep_validated:
                    _replace_checkpoint(replace(validated, optimizer=None), run_dir / f"step-{step:06d}.pt")
                score = _score(metrics, cfg.select)
                if score > best_score:
                    best_score, best_metrics = score, metrics
                    _replace_checkpoint(validated, best)
                _replace_checkpoint(validated, last)
                saved_step = step
            history.append(info)
            log.write(json.dumps(info) + "\n")
            log.flush()
            total = cfg.steps if cfg.time_limit_s <= 0 else max(step, int(round(step / max(frac, 1e-9))))
            yield ProgressEvent(step, total, "train", info, unit="steps")
        finished = True
    finally:
        # on completion, cancel (GeneratorExit) or error: leave a valid last checkpoint
        if step > saved_step or not last.exists():
            _replace_checkpoint(checkpoint({"cancelled": not finished}), last)
        log.close()
    return FitResult(run_dir, last, best if best.exists() else None, step, history, best_metrics, init_metrics)
