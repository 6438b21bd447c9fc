"""Average the weights of several checkpoints of one architecture (stochastic weight averaging, Izmailov et al.
2018, done afterwards on the checkpoints a run kept with ``--keep-validated``), or interpolate a fine-tuned model
towards its parent (WiSE-FT, Wortsman et al. 2022).

Checkpoints from one fine-tuning run lie in one basin of the loss; their mean sits nearer its centre and
generalises better than any one of them, and steadies the thin membranes that single checkpoints open and close.
A fine-tune started from a parent stays in the parent's basin: half-way between the two keeps most of what the
few corrected slices taught and most of what the parent knew about keeping membranes closed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .checkpoint import Checkpoint, CheckpointError, library_versions


def average_checkpoints(ckpts: Sequence[Checkpoint], provenance: dict[str, Any] | None = None,
                        weights: Sequence[float] | None = None) -> Checkpoint:
    """One checkpoint whose floating-point tensors (weights and batch-norm statistics) are the mean of ``ckpts``'
    (weighted by ``weights``, which must be >= 0 and are normalised to sum 1; None = equal weights).

    All must share architecture, its arguments, the input normalisation and the tensor names and shapes;
    integer buffers (batch-norm step counters) are taken from the first. The result has no optimiser state,
    step = the largest step, the largest measured context, and threshold 0.5 (calibrate it again: the averaged
    model is a new model).
    """
    if not ckpts:
        raise ValueError("nothing to average: give at least one checkpoint")
    w = [1.0] * len(ckpts) if weights is None else [float(v) for v in weights]
    if len(w) != len(ckpts) or min(w) < 0 or sum(w) <= 0:
        raise ValueError(f"weights {list(w)} do not fit {len(ckpts)} checkpoints (one >= 0 each, not all 0)")
    w = [v / sum(w) for v in w]
    first = ckpts[0]
    for i, c in enumerate(ckpts[1:], start=1):
        if (c.arch, c.arch_kwargs) != (first.arch, first.arch_kwargs):
            raise CheckpointError(f"checkpoint {i} is {c.arch} {c.arch_kwargs}, checkpoint 0 is "
                                  f"{first.arch} {first.arch_kwargs}: only one architecture can be averaged")
        if c.norm != first.norm:
            raise CheckpointError(f"checkpoint {i} normalises its input differently ({c.norm} vs {first.norm})")
        if c.state_dict.keys() != first.state_dict.keys():
            raise CheckpointError(f"checkpoint {i} has different tensors than checkpoint 0")
        bad = [k for k, v in c.state_dict.items() if v.shape != first.state_dict[k].shape]
        if bad:
            raise CheckpointError(f"checkpoint {i}: tensor shapes differ from checkpoint 0 at {bad[:3]}")
    state: dict[str, torch.Tensor] = {}
    for key, value in first.state_dict.items():
        if value.is_floating_point():
            total = torch.zeros_like(value, dtype=torch.float64)
            for c, wc in zip(ckpts, w):
                total += wc * c.state_dict[key].to(torch.float64)
            state[key] = total.to(value.dtype)
        else:
            state[key] = value.clone()
    prov = {"versions": library_versions(), **(provenance or {})}
    # one architecture, so one receptive context: the measured one where only some checkpoints carry it
    context = max(int(c.context) for c in ckpts)
    return Checkpoint(first.arch, dict(first.arch_kwargs), state, first.norm, first.train_config, prov,
                      max(c.step for c in ckpts), None, 0.5, context)


def interpolate_towards(parent: Checkpoint, child: Checkpoint, parent_weight: float) -> Checkpoint:
    """``child`` (a fine-tune of ``parent``) with its floating-point tensors moved to
    ``parent_weight * parent + (1 - parent_weight) * child`` (WiSE-FT); everything else is the child's
    (configuration, provenance, step, thresholds), without optimiser state. ``parent_weight`` in [0, 1]."""
    import dataclasses

    if not 0.0 <= parent_weight <= 1.0:
        raise ValueError(f"parent_weight must be in [0, 1], got {parent_weight}")
    mixed = average_checkpoints([parent, child], weights=[parent_weight, 1.0 - parent_weight])
    return dataclasses.replace(child, state_dict=mixed.state_dict, optimizer=None)
