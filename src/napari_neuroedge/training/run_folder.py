"""Cleaning training run folders: delete the resume and intermediate checkpoints, never a model the user keeps.

A run folder is what :func:`napari_neuroedge.training.loop.iter_fit` writes: ``config.json`` and ``log.jsonl``
(a few kB, the record of the run: kept), ``last.pt`` and ``best.pt`` (with the optimiser state, for resuming;
tens of MB each), ``step-NNNNNN.pt`` (kept validated checkpoints) and ``.NAME.new`` (a checkpoint being replaced).
The model a fine-tune finishes with is written outside its run folder, so cleaning never reaches it; files the
caller names in ``keep`` (e.g. a ``best.pt`` the user loaded as a model) are never deleted either.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

#: Files that make a folder a run folder (written by iter_fit at the start of every run).
RUN_MARKERS = ("config.json", "log.jsonl")
#: The resume / intermediate files of a run folder (glob patterns, matched in the folder itself only).
RESUME_PATTERNS = ("last.pt", "best.pt", "step-*.pt", ".*.pt.new", ".*.part")


@dataclass
class CleanPlan:
    """What cleaning deletes (or deleted): the files, their total size in bytes, and the run folders."""

    files: list[Path] = field(default_factory=list)
    nbytes: int = 0
    runs: list[Path] = field(default_factory=list)

    def describe(self) -> str:
        """'6 file(s), 212.4 MB, in 3 run folder(s)'."""
        return f"{len(self.files)} file(s), {self.nbytes / 1e6:.1f} MB, in {len(self.runs)} run folder(s)"


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in RUN_MARKERS)


def run_folders(root: str | Path) -> list[Path]:
    """``root`` itself if it is a run folder, else the run folders inside it, and one level further down (a
    cross-fitted fine-tune's ``fold-N`` runs in its folder), sorted; [] if none."""
    root = Path(root)
    if is_run_folder(root):
        return [root]
    found: list[Path] = []
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if is_run_folder(p):
            found.append(p)
        elif p.is_dir():
            found += sorted(q for q in p.iterdir() if is_run_folder(q))
    return found


def plan_clean(runs: Iterable[str | Path], keep: Iterable[str | Path] = ()) -> CleanPlan:
    """The resume / intermediate files of the run folders ``runs``, except any file in ``keep``."""
    kept = {Path(p).resolve() for p in keep}
    plan = CleanPlan()
    for run in runs:
        run = Path(run)
        if not is_run_folder(run):
            raise ValueError(f"{run} is not a training run folder (no {' or '.join(RUN_MARKERS)}); nothing deleted")
        files = sorted({f for pattern in RESUME_PATTERNS for f in run.glob(pattern)
                        if f.is_file() and not f.is_symlink() and f.resolve() not in kept})
        if files:
            plan.runs.append(run)
            plan.files += files
            plan.nbytes += sum(f.stat().st_size for f in files)
    return plan


def clean(plan: CleanPlan) -> CleanPlan:
    """Delete the files of ``plan``; returns what was deleted (a file already gone is skipped)."""
    done = CleanPlan()
    for f in plan.files:
        try:
            size = f.stat().st_size
            f.unlink()
        except FileNotFoundError:
            continue
        done.files.append(f)
        done.nbytes += size
        if f.parent not in done.runs:
            done.runs.append(f.parent)
    return done
