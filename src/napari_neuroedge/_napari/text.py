"""Words for the plugin's messages (no Qt): names short enough for a one-line notification, a model in one line,
what Fine-tune will train on and what its finished run kept, what cleaning the run folders deletes."""

from __future__ import annotations

from typing import Any


def short_name(path: Any, limit: int = 24) -> str:
    """A file or layer name short enough for a one-line notification (the middle elided)."""
    name = str(path).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or str(path)
    return name if len(name) <= limit else name[: limit // 2 - 1] + "\u2026" + name[-(limit // 2):]


def describe_model(ckpt: Any) -> str:
    """One human line for a checkpoint: "U-Net, base 16, depth 4 - trained 5,152 steps - threshold 0.6"; a
    fine-tuned one says how many steps its run did and which it kept: "fine-tuned 142 steps, kept step 50"."""
    from ..config import arch_display_name

    arch = arch_display_name(ckpt.arch)
    kwargs = ckpt.arch_kwargs if isinstance(ckpt.arch_kwargs, dict) else {}
    parts = [arch + "".join(f", {str(k).replace('_', ' ')} {v}" for k, v in kwargs.items())]
    prov = ckpt.provenance if isinstance(ckpt.provenance, dict) else {}
    step, done = int(ckpt.step or 0), prov.get("steps_done")
    if done is not None:  # a finished fine-tune: the checkpoint's step is the kept (validated) one
        parts.append(f"fine-tuned {int(done):,} steps" + (f", kept step {step:,}" if step != int(done) else ""))
    elif prov.get("cancelled"):
        parts.append(f"fine-tune cancelled, kept step {step:,}")
    elif step:
        parts.append(f"trained {step:,} steps")
    parts.append(f"threshold {ckpt.threshold:g}")
    return " \u00b7 ".join(parts)


def done_summary(outcome: Any, kept_step: int | None, elapsed: str) -> str:
    """The end of a finished run in words: steps and time, then the kept model's held-out F1 and Rand error
    beside the parent's (``outcome.parent_metrics`` where the core measured it), and which values the plot shows."""
    steps = f"{outcome.steps:,} steps in {elapsed}"
    kept = outcome.kept_metrics or outcome.best_metrics
    if not kept:
        return f"{steps}. Not validated: no pixels were held out, so the model is the last step's."
    where = (" (the parent: fine-tuning did not beat it)" if getattr(outcome, "parent_kept", False) else
             " (the mean of the two runs, each validated on the slices the other trained on)"
             if str(getattr(outcome, "kept", "")).startswith("the mean of") else
             f" (validated at step {kept_step:,})" if kept_step is not None else "")
    text = (f"{steps}. Held-out corrected pixels, the kept model{where}: boundary F1 {kept['f1']:.3f}, Rand error "
            f"{kept['rand_error']:.3f}")
    parent = getattr(outcome, "parent_metrics", None)
    if parent:
        text += f"; the parent: F1 {parent['f1']:.3f}, Rand error {parent['rand_error']:.3f}"
    text += (". The plot's title shows the last validation's values, not the kept model's."
             if kept_step is not None else ".")
    if outcome.threshold is not None:
        text += f" Threshold {outcome.threshold:g} ({outcome.threshold_source})."
    text += "".join(f" Note: {n.rstrip('.')}." for n in outcome.notes)
    return text


def will_train_on(summary: str, holdout: float, slices: int = 1) -> str:
    """Fine-tune's "Will train on ..." line: the data summary's text, then what is validated on: with two
    ``slices`` or more whole slices (two runs, cross-fitted), else a ``holdout`` fraction of the slice in blocks."""
    if holdout <= 0:
        band = "\nNothing is held out: no validation."
    elif slices >= 2:
        band = ("\nTwo runs of half the time each: one trains on every other slice and is validated on the rest, "
                "the other the other way round; you get the mean of the two.")
    else:
        band = f"\n{holdout:.0%} of the slice, in blocks spread over it, is held out: never trained on, validated on."
    return "Will train on " + summary + band


def clean_preview(plan: Any, root: Any) -> str:
    """What "Clean run folders" will delete under ``root`` (a :class:`~napari_neuroedge.training.run_folder.CleanPlan`),
    before the confirming click."""
    names = sorted({f.name for f in plan.files})
    return (f"Will delete {plan.describe()} under {root} ({', '.join(names)}: resume files of past runs). The models "
            "you keep are not touched; their logs stay. Click again to delete.")


def cleaned(done: Any, root: Any) -> str:
    """What "Clean run folders" deleted under ``root`` and the space it freed."""
    return (f"Removed {done.describe()} under {root}: {', '.join(sorted({f.name for f in done.files}))}; "
            f"{done.nbytes / 1e6:.1f} MB freed. The models in {root.parent} were kept.")
