"""Cleaning run folders: only the resume / intermediate checkpoints go; kept files, logs and other folders stay."""

from __future__ import annotations

import pytest

from napari_neuroedge.training.run_folder import clean, plan_clean, run_folders


def _run(root, name, files):
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "log.jsonl").write_text("")
    for fname, size in files.items():
        (run / fname).write_bytes(b"x" * size)
    return run


def test_plan_and_clean_remove_only_resume_files(tmp_path):
    root = tmp_path / "runs"
    a = _run(root, "a", {"last.pt": 1000, "best.pt": 700, "step-000025.pt": 300, ".last.pt.new": 50})
    b = _run(root, "b", {"last.pt": 10, "notes.pt.txt": 5})
    (root / "not-a-run").mkdir()
    (root / "not-a-run" / "last.pt").write_bytes(b"y" * 99)
    model = tmp_path / "kept.pt"
    model.write_bytes(b"m")
    assert run_folders(root) == [a, b] and run_folders(a) == [a] and run_folders(tmp_path / "none") == []
    plan = plan_clean(run_folders(root), keep=[a / "best.pt", model])
    assert sorted(p.name for p in plan.files) == [".last.pt.new", "last.pt", "last.pt", "step-000025.pt"]
    assert plan.nbytes == 1000 + 300 + 50 + 10 and plan.runs == [a, b]
    assert plan.describe() == "4 file(s), 0.0 MB, in 2 run folder(s)"
    done = clean(plan)
    assert done.nbytes == plan.nbytes and len(done.files) == 4
    assert sorted(p.name for p in a.iterdir()) == ["best.pt", "config.json", "log.jsonl"]
    assert sorted(p.name for p in b.iterdir()) == ["config.json", "log.jsonl", "notes.pt.txt"]
    assert (root / "not-a-run" / "last.pt").exists() and model.exists()
    assert clean(plan).files == []  # already gone: nothing counted twice
    assert plan_clean(run_folders(root)).files == [a / "best.pt"]


def test_the_runs_of_a_cross_fitted_fine_tune_are_found_in_its_folder(tmp_path):
    root = tmp_path / "runs"
    folds = [_run(root / "ft", f"fold-{k}", {"last.pt": 10, "best.pt": 10}) for k in (1, 2)]
    (root / "ft" / "candidate.pt").write_bytes(b"c")  # the guard's rejected candidate: a model, not a resume file
    assert run_folders(root) == folds
    plan = plan_clean(run_folders(root))
    assert len(plan.files) == 4 and all(f.parent in folds for f in plan.files)


def test_plan_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a training run folder"):
        plan_clean([tmp_path])
    assert (tmp_path / "last.pt").exists()
