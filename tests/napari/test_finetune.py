"""One-click fine-tune: background run with progress and live plots, result selected and re-predicted, cancel,
a second run continuing from the first, closing the viewer mid-run. (The GUI event-loop lateness meanwhile is
measured in benchmarks/bench_gui_latency.py, not here.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_neuroedge._napari import tracking
from napari_neuroedge.config import FinetuneOptions
from napari_neuroedge.models.checkpoint import load_checkpoint


def _correct_slice(viewer, mem, z: int) -> None:
    """Simulate a brush correction: thicken the membranes of slice z by painting along them."""
    ys, xs = np.nonzero(np.asarray(mem.data[z]) == 0)
    for y, x in list(zip(ys, xs))[:: max(1, len(ys) // 15)][:15]:
        mem.paint((z, int(y), int(x)), 1)


def _small(ft, steps: int) -> None:
    ft.steps_spin.setValue(steps)
    ft.crop_spin.setValue(64)
    ft.batch_spin.setValue(2)
    ft.lr_spin.setValue(0.01)


@pytest.fixture
def keep_fine_tuned(monkeypatch):
    """The guard keeps the fine-tuned weights (parent share 0) whatever the held-out pixels say.

    A few painted pixels rarely beat the parent beyond noise, and then the guard rightly keeps the parent's weights
    (tests/core/test_finetune_service.py holds that rule); the tests using this fixture are about what the panel
    shows after a fine-tuned model, so they take the guard's choice out of the way."""
    import dataclasses

    from napari_neuroedge.training import guard

    real_choose = guard.choose

    def choose(parent, candidates):
        verdict = real_choose(parent, candidates)
        tuned = [c for c in candidates if c.parent_weight == 0.0]
        return dataclasses.replace(verdict, kept=tuned[0], parent_kept=False) if tuned else verdict

    monkeypatch.setattr(guard, "choose", choose)


@pytest.fixture
def corrected_viewer(panel_viewer, waiter, goto):
    viewer, panel = panel_viewer
    goto(viewer, viewer.layers["em"], 1)
    waiter(panel.predict.predict())  # current slice (1)
    mem = viewer.layers["em membranes"]
    _correct_slice(viewer, mem, 1)
    assert tracking.ledger_of(mem).corrected == {1}
    return viewer, panel, mem


def test_finetune_twice_in_background(qtbot, corrected_viewer, waiter, tmp_path, notes, monkeypatch, keep_fine_tuned):
    viewer, panel, mem = corrected_viewer
    ft = panel.finetune
    # the defaults behind "Advanced" are the core's one-click recipe, the same as `neuroedge finetune`'s
    d = FinetuneOptions()
    assert (ft.time_spin.value(), ft.steps_spin.value(), ft.crop_spin.value()) == (d.time_limit_s, d.steps, d.crop)
    assert ft.holdout_spin.value() == pytest.approx(0.25)
    assert ft.model_label.text() == panel.predict.session.selected_model
    first_model = panel.predict.session.selected_model
    ft.save_edit.setText(str(tmp_path / "models"))
    _small(ft, 12)
    seen: list[tuple[int, int, str]] = []  # every training event the panel showed: (done, total, status text)
    show = ft.jobs.update_event

    def record(event, extra="", **kwargs):
        show(event, extra, **kwargs)
        if event.stage == "train" and (not seen or seen[-1][0] != event.done):
            seen.append((event.done, event.total, ft.jobs.status.text()))

    monkeypatch.setattr(ft.jobs, "update_event", record)

    qtbot.mouseClick(ft.run_button, Qt.LeftButton)
    job = ft.job
    assert job is not None and job.worker is not None and not ft.run_button.isEnabled()
    waiter(job, timeout=120)
    assert job.state == "done", job.error
    # progress: every step counted; the bar's range stays fixed (a time-limited run's total is an estimate, so the
    # bar shows the fraction and the text the count); no ETA before a second step measured one, then an ETA
    # step 0 is the parent, validated before the first step (the guard's reference), then every step counted
    assert [done for done, _, _ in seen] == list(range(0, 13))
    assert seen[0][2].startswith("train: 0 steps") and "ETA" not in seen[0][2]  # nothing measured yet
    assert seen[1][2].startswith("train: 1 steps")
    assert any("ETA" in text for _, _, text in seen[1:-1])
    assert {"parent F1", "parent Rand err"} <= set(ft.val_plot.references)  # the parent's held-out values drawn
    assert ft.jobs.bar.maximum() == ft.jobs.ESTIMATE_RANGE and ft.jobs.bar.value() == ft.jobs.bar.maximum()
    # live plots got every loss and the validation at the end (held-out rows of the corrected slice)
    assert len(ft.loss_plot.series["loss"]) == 12
    assert len(ft.val_plot.series["F1"]) >= 1
    # saved under the chosen folder as <timestamp>.pt with provenance, and selected in Predict
    path = Path(job.result.path)
    assert path.parent == tmp_path / "models" and path.suffix == ".pt" and path.stem[:8].isdigit()
    ckpt = load_checkpoint(path)
    assert ckpt.provenance["name"] == path.stem and ckpt.provenance["parent"]["model"] == first_model
    assert json.loads(path.with_suffix(".json").read_text())["provenance"]["name"] == path.stem
    new_name = job.extra["model_name"]
    assert panel.predict.session.selected_model == new_name == path.stem
    assert panel.predict.model_combo.currentText() == new_name
    # the model line says what the run did and which step it kept; the plots mark that step; the message says
    # the kept model's held-out scores and that the plot's title shows the last validation's
    kept_step, steps_done = ckpt.step, ckpt.provenance["steps_done"]
    assert steps_done == 12 and 0 < kept_step <= 12
    line = panel.predict.model_info.text().splitlines()[0]
    assert f"fine-tuned 12 steps{'' if kept_step == 12 else f', kept step {kept_step}'} \u00b7" in line, line
    assert ft.val_plot.kept_step == ft.loss_plot.kept_step == kept_step
    done = ft.jobs.status.text()
    kept = job.result.kept_metrics
    assert (f"the kept model (validated at step {kept_step}): boundary F1 {kept['f1']:.3f}, Rand error "
            f"{kept['rand_error']:.3f}") in done
    assert "The plot's title shows the last validation's values, not the kept model's." in done
    assert str(path) in done
    # the nearest slice the user did NOT correct was re-predicted with the new model; slice 1 keeps its labels
    repredict = job.extra["repredict"]
    waiter(repredict)
    z = job.extra["repredicted_slice"]
    assert z in (0, 2) and tracking.current_slice(viewer, viewer.layers["em"]) == z
    assert tracking.ledger_of(mem).model_of(z)["model"] == new_name
    assert tracking.ledger_of(mem).model_of(1)["model"] == first_model
    assert tracking.ledger_of(mem).edited == {1}
    toasts = notes("info")
    assert f"Fine-tuned model '{new_name}' saved and selected in Predict; re-predicting slice {z}, which you did " \
           "not correct." in toasts and not any(str(tmp_path) in m for m in toasts)  # short: no path

    # a second fine-tune continues from the first
    _small(ft, 2)
    job2 = waiter(ft.finetune())
    assert job2.state == "done"
    ckpt2 = load_checkpoint(job2.result.path)
    assert ckpt2.provenance["parent"]["model"] == new_name
    assert ckpt2.provenance["init"] == path.stem
    waiter(job2.extra["repredict"])
    assert panel.predict.session.selected_model == Path(job2.result.path).stem


def test_cancel_before_validation_keeps_nothing_and_removes_its_run_folder(qtbot, corrected_viewer, waiter, tmp_path,
                                                                          notes):
    viewer, panel, mem = corrected_viewer
    ft = panel.finetune
    models = tmp_path / "m"
    # the user's own things in the models folder: a model, an older run with its log
    (models / "runs" / "older").mkdir(parents=True)
    (models / "runs" / "older" / "log.jsonl").write_text("{}\n")
    (models / "mine.pt").write_bytes(b"a model")
    ft.save_edit.setText(str(models))
    _small(ft, 10_000)
    job = ft.finetune()
    run_dir = job.extra["run_dir"]
    qtbot.waitUntil(lambda: job.last_event is not None and job.last_event.stage == "train"
                    and job.last_event.done >= 2, timeout=60_000)
    assert (run_dir / "log.jsonl").exists()
    qtbot.mouseClick(ft.jobs.cancel_button, Qt.LeftButton)
    waiter(job)
    assert job.state == "cancelled" and job.extra["outcome"].path is None
    assert sorted(p.name for p in models.glob("*.pt")) == ["mine.pt"]  # nothing unvalidated is called a model
    assert not run_dir.exists()  # its unvalidated last.pt is gone with it
    assert (models / "runs" / "older" / "log.jsonl").exists() and (models / "mine.pt").read_bytes() == b"a model"
    assert notes("info") == ["Fine-tuning cancelled before the first validation; no model was kept."]
    assert ft.jobs.status.text() == ("Fine-tuning cancelled before the first validation; no model was kept, and its "
                                     f"run folder {run_dir} was removed.")


def test_choosing_another_membrane_layer_clears_the_last_run(qtbot, corrected_viewer, waiter, tmp_path, notes):
    viewer, panel, mem = corrected_viewer
    ft = panel.finetune
    ft.save_edit.setText(str(tmp_path / "m"))
    _small(ft, 10_000)
    job = ft.finetune()
    qtbot.waitUntil(lambda: len(ft.loss_plot.series.get("loss", [])) >= 2, timeout=60_000)
    ft.jobs.cancel_button.click()
    waiter(job)
    notes("info")
    assert ft.jobs.bar.format() == "cancelled" and "cancelled" in ft.jobs.status.text()
    viewer.add_labels(np.zeros(mem.data.shape, np.uint8), name="other membranes")
    ft.membranes_combo.set_layer(mem.name)  # the same layer again: the run stays shown
    assert "cancelled" in ft.jobs.status.text() and ft.loss_plot.series
    ft.membranes_combo.set_layer("other membranes")
    assert ft.membranes_combo.currentText() == "other membranes"
    assert ft.jobs.status.text() == "" and ft.jobs.bar.format() == "%p%" and ft.jobs.bar.value() == 0
    assert not ft.loss_plot.series and not ft.val_plot.series


def test_cancel_finetune_keeps_last_validated_checkpoint(qtbot, corrected_viewer, waiter, tmp_path, notes):
    viewer, panel, mem = corrected_viewer
    ft = panel.finetune
    selected = panel.predict.session.selected_model
    ft.save_edit.setText(str(tmp_path / "m"))
    _small(ft, 10_000)
    job = ft.finetune()
    val_every = ft.options().val_every
    qtbot.waitUntil(lambda: job.last_event is not None and job.last_event.stage == "train"
                    and job.last_event.done >= val_every + 1, timeout=120_000)
    qtbot.mouseClick(ft.jobs.cancel_button, Qt.LeftButton)
    waiter(job)
    assert job.state == "cancelled"
    kept = Path(job.extra["outcome"].path)
    assert kept.exists() and kept.name.endswith("-cancelled.pt")
    ckpt = load_checkpoint(kept)
    assert ckpt.provenance.get("cancelled") is True and ckpt.step % val_every == 0 and ckpt.step >= val_every
    assert ckpt.optimizer is None and "val" in ckpt.provenance
    session = panel.predict.session
    assert session.models[kept.stem] == str(kept.resolve())
    assert session.selected_model == selected  # not switched to a half-trained model
    assert any("last validated checkpoint is kept" in m for m in notes("info"))
    assert ft.run_button.isEnabled()


def test_closing_viewer_stops_finetune(qtbot, corrected_viewer, tmp_path):
    viewer, panel, mem = corrected_viewer
    ft = panel.finetune
    ft.save_edit.setText(str(tmp_path / "m"))
    _small(ft, 10_000)
    job = ft.finetune()
    qtbot.waitUntil(lambda: job.last_event is not None and job.last_event.stage == "train", timeout=60_000)
    viewer.close()
    assert job.finished.wait(15), "the fine-tune thread did not stop after the viewer closed"
    runs = list((tmp_path / "m" / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "last.pt").exists()  # stopped cleanly, checkpoint written
    qtbot.wait(50)  # late worker signals must not touch the closed viewer
    assert job.detached or not job.running


def test_finetune_from_exported_folder_with_replay(qtbot, corrected_viewer, waiter, tmp_path):
    viewer, panel, mem = corrected_viewer
    folder = tmp_path / "set"
    assert len(panel.export.export(str(folder))) == 1
    ft = panel.finetune
    ft.source_combo.setCurrentText("training-set folder")
    assert ft.folder_edit.text() == str(folder)
    label = np.asarray(mem.data[1]) > 0
    qtbot.waitUntil(lambda: f"Will train on 1 exported slice(s) in set, {label.size:,} labelled pixels" in
                    ft.data_label.text(), timeout=2000)
    assert f"slice em_z0001: 100% labelled, {label.mean():.1%} membrane" in ft.data_label.text()
    ft.replay_edit.setText(str(folder))
    ft.save_edit.setText(str(tmp_path / "m"))
    _small(ft, 2)
    job = waiter(ft.finetune())
    assert job.state == "done"
    ckpt = load_checkpoint(job.result.path)
    assert ckpt.provenance["data"] == str(folder) and ckpt.provenance["replay"] == str(folder)
    waiter(job.extra["repredict"])


def test_finetune_without_data_says_why(qtbot, panel_viewer, tmp_path, notes):
    viewer, panel = panel_viewer
    ft = panel.finetune
    assert ft.finetune() is None
    assert "No membrane layer" in notes("warning")[0]
    ft.source_combo.setCurrentText("training-set folder")
    ft.folder_edit.setText(str(tmp_path / "nothing"))
    assert ft.finetune() is None
    assert "manifest.json" in notes("warning")[0]


def test_learning_rate_box_keeps_small_values(panel_viewer):
    """The box's decimals follow its 1e-6 step, so neither the minimum nor a 2e-5 rate is rounded to 0."""
    _, panel = panel_viewer
    lr = panel.finetune.lr_spin
    assert lr.minimum() == pytest.approx(1e-6) and lr.value() == pytest.approx(FinetuneOptions().lr) == 5e-4
    lr.setValue(2e-5)
    assert lr.value() == pytest.approx(2e-5)


def test_button_and_cli_build_the_same_finetune(panel_viewer, tmp_path):
    """An untouched form and `neuroedge finetune` with no recipe flags give the same options and TrainConfig."""
    from napari_neuroedge.cli import build_parser, finetune_options
    from napari_neuroedge.training.finetune import finetune_config

    _, panel = panel_viewer
    gui = panel.finetune.options()
    args = build_parser().parse_args(["finetune", "--from", "default", "--data", str(tmp_path), "-o", "x.pt"])
    cli = finetune_options(args)
    from dataclasses import replace

    # the GUI leaves one core to the event loop and uses the device chosen in Predict; all else is identical
    assert replace(gui, threads=0, device="auto") == cli
    parent = panel.predict.session.checkpoint(panel.predict.session.selected_model)
    assert finetune_config(parent, replace(gui, threads=0, device="auto"), True) == finetune_config(parent, cli, True)


def test_finetune_options_persist_but_not_the_models_folder(make_napari_viewer, tmp_path, monkeypatch):
    """Advanced options survive re-creating the widget (a new session); "save models in" follows the models dir."""
    from napari_neuroedge._napari.widgets.finetune import FinetuneWidget

    viewer = make_napari_viewer()
    ft = FinetuneWidget(viewer)
    ft.lr_spin.setValue(5e-5)
    ft.crop_spin.setValue(128)
    ft.replay_edit.setText("/data/isbi-train")
    ft.save_edit.setText(str(tmp_path / "elsewhere"))
    saved = json.loads((tmp_path / "settings" / "finetune.json").read_text())
    assert saved == {"lr": pytest.approx(5e-5), "crop": 128, "replay_data": "/data/isbi-train"}  # changed ones only
    ft.close()
    monkeypatch.setenv("NEUROEDGE_MODELS_DIR", str(tmp_path / "models2"))
    again = FinetuneWidget(make_napari_viewer())
    opts = again.options()
    assert opts.lr == pytest.approx(5e-5) and opts.crop == 128
    assert (opts.steps, opts.batch) == (FinetuneOptions().steps, FinetuneOptions().batch)
    assert again.replay_edit.text() == "/data/isbi-train"
    assert again.save_edit.text() == str(tmp_path / "models2")


def test_summary_lists_the_training_data_and_flags_need_a_second_click(qtbot, corrected_viewer, waiter, tmp_path,
                                                                       notes):
    from napari_neuroedge._napari.widgets.correct import prediction_of

    viewer, panel, mem = corrected_viewer
    ft = panel.finetune
    label = np.asarray(mem.data[1]) > 0
    changed = (prediction_of(viewer, mem, 1) != label).mean()
    assert 0 < changed < 0.2
    expected = f"slice 1: 100% labelled, {label.mean():.1%} membrane, {changed:.1%} changed by you"
    qtbot.waitUntil(lambda: expected in ft.data_label.text(), timeout=2000)
    text = ft.data_label.text()
    assert text.startswith(f"Will train on 1 corrected slice(s), {96 * 112:,} labelled pixels:")
    assert "25% of the slice, in blocks spread over it, is held out" in text and "Warning" not in text
    ft.holdout_spin.setValue(0.0)
    qtbot.waitUntil(lambda: "Nothing is held out: no validation." in ft.data_label.text(), timeout=2000)
    ft.holdout_spin.setValue(0.25)
    # slice 0 (never predicted, empty) marked corrected: flagged, and the first click starts nothing
    panel.correct.set_corrected(mem, 0, True)
    ft.save_edit.setText(str(tmp_path / "m"))
    _small(ft, 10_000)
    assert ft.finetune() is None and ft.job is None
    assert "Warning: slice 0: almost no membrane labelled (0.0%); is it really corrected?" in ft.data_label.text()
    assert "slice 0: 100% labelled, 0.0% membrane, labels drawn from scratch (never predicted)" in ft.data_label.text()
    assert ft.run_button.text().startswith("Fine-tune anyway")
    assert "click again to fine-tune anyway" in notes("warning")[0]
    qtbot.mouseClick(ft.run_button, Qt.LeftButton)  # the second click starts
    job = ft.job
    assert job is not None and job.running and ft.run_button.text() == "Fine-tune"
    qtbot.mouseClick(ft.jobs.cancel_button, Qt.LeftButton)
    waiter(job)
    assert job.state == "cancelled"
    notes()


def test_after_finetune_difference_is_against_the_corrected_prediction_and_runs_can_be_cleaned(
        qtbot, panel_viewer, waiter, tmp_path, notes, keep_fine_tuned):
    from napari_neuroedge._napari.training_data import viewer_training_slices

    viewer, panel = panel_viewer
    waiter(panel.predict.predict(scope="all slices"))
    mem, boundary = viewer.layers["em membranes"], viewer.layers["em boundary"]
    before = (np.asarray(boundary.data[1]) >= 0.5).astype(np.uint8)  # the prediction the user corrects
    _correct_slice(viewer, mem, 1)
    panel.correct.diff_check.setChecked(True)
    ft = panel.finetune
    models = tmp_path / "models"
    ft.save_edit.setText(str(models))
    _small(ft, 10)
    job = waiter(ft.finetune())
    assert job.state == "done"
    waiter(job.extra["repredict"])
    new = load_checkpoint(job.result.path)
    waiter(panel.predict.predict(scope="all slices"))  # the user looks at the whole stack with the new model
    after = (np.asarray(boundary.data[1]) >= new.threshold).astype(np.uint8)
    assert (after != before).sum() > 20  # the new model sees slice 1 otherwise: the view must not follow it
    label = np.asarray(mem.data[1])
    np.testing.assert_array_equal(np.asarray(viewer.layers["em difference"].data[1]),
                                  tracking.difference_map(label, before))
    raw = viewer_training_slices(viewer, mem)  # a second fine-tune weights what the user changed, not the drift
    np.testing.assert_array_equal(raw[0]["corrected"], (before != label).astype(np.uint8))

    # clean the run folder: resume files go, the kept model, a model listed from the run folder, logs stay
    run = models / "runs" / Path(job.result.path).stem
    resume = {p.name: p.stat().st_size for p in run.glob("*.pt")}
    assert set(resume) == {"last.pt", "best.pt"}
    panel.predict.session.add_model(str(run / "best.pt"), select=False)  # the user loaded the run's best.pt
    ft.clean_button.click()
    assert all((run / name).exists() for name in resume)  # the first click only lists
    size_mb = resume["last.pt"] / 1e6
    assert f"Will delete 1 file(s), {size_mb:.1f} MB, in 1 run folder(s)" in ft.clean_label.text()
    assert ft.clean_button.text().startswith("Delete them")
    ft.clean_button.click()
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.json", "log.jsonl"]
    assert f"Removed 1 file(s), {size_mb:.1f} MB, in 1 run folder(s)" in ft.clean_label.text()
    assert f"{size_mb:.1f} MB freed" in ft.clean_label.text() and size_mb > 0.1
    assert load_checkpoint(job.result.path).optimizer is None  # the kept model is untouched and loads
    assert ft.clean_runs(confirmed=True) is None and "Nothing to clean" in ft.clean_label.text()
    assert any("Run folders cleaned" in m for m in notes("info"))


def test_the_parent_validated_at_step_0_is_the_reference_and_the_done_message_names_both(panel_viewer):
    """The core validates the parent before the first step (a validation event at step 0): it is drawn as the
    reference lines, not as a point of the run; the done message puts the parent's held-out F1 and Rand error
    beside the kept model's, and says the plot's title is the last validation's."""
    from napari_neuroedge._napari.text import done_summary
    from napari_neuroedge.progress import ProgressEvent
    from napari_neuroedge.training.finetune import FinetuneOutcome

    _, panel = panel_viewer
    ft = panel.finetune
    ft._on_event(None, ProgressEvent(0, 40, "train", {"val": {"f1": 0.9, "rand_error": 0.1}}, unit="steps"))
    assert ft.val_plot.references == {"parent F1": 0.9, "parent Rand err": 0.1} and not ft.val_plot.series
    assert "parent's held-out F1 0.900, Rand error 0.100" in ft.jobs.status.text()
    ft._on_event(None, ProgressEvent(20, 40, "train", {"loss": 0.3, "val": {"f1": 0.95, "rand_error": 0.05}},
                                     unit="steps"))
    assert ft.val_plot.series == {"F1": [(20.0, 0.95)], "Rand err": [(20.0, 0.05)]}
    assert ft.val_plot.legend_names() == ["parent F1", "parent Rand err", "F1", "Rand err"]
    outcome = FinetuneOutcome(steps=1234, kept_metrics={"f1": 0.96, "rand_error": 0.04}, threshold=0.5,
                              threshold_source="the parent's", notes=["validation is weak."])
    text = done_summary(outcome, 20, "0:12")
    assert text == ("1,234 steps in 0:12. Held-out corrected pixels, the kept model (validated at step 20): boundary F1 "
                    "0.960, Rand error 0.040. The plot's title shows the last validation's values, not the kept "
                    "model's. Threshold 0.5 (the parent's). Note: validation is weak.")
    outcome.parent_metrics = {"f1": 0.9, "rand_error": 0.1}  # FinetuneOutcome.parent_metrics (issue 23)
    assert ("Rand error 0.040; the parent: F1 0.900, Rand error 0.100. The plot's title" in
            done_summary(outcome, 20, "0:12"))
    assert done_summary(FinetuneOutcome(steps=3), None, "0:01") == \
        "3 steps in 0:01. Not validated: no pixels were held out, so the model is the last step's."


def test_cross_fitted_runs_plot_their_change_from_the_parent(panel_viewer):
    """Two runs over whole slices (issue 23) validate on different slices, each against the parent on the same
    ones: the plot shows the change from the parent (the parent at 0), so run 2's points are comparable with run 1's."""
    from napari_neuroedge.progress import ProgressEvent

    _, panel = panel_viewer
    ft = panel.finetune

    def val(done, f1, rand, fold, init=False):
        info = {"val": {"f1": f1, "rand_error": rand}, "fold": fold, "folds": 2, **({"init": True} if init else {})}
        ft._on_event(None, ProgressEvent(done, 40, "train", info, unit="steps"))

    val(0, 0.90, 0.10, 1, init=True)
    assert ft.val_plot.references == {"the parent": 0.0} and "run 1 of 2: the parent's F1 0.900" in \
        ft.jobs.status.text()
    val(20, 0.95, 0.08, 1)
    val(20, 0.80, 0.20, 2, init=True)  # run 2 starts: its own slices, its own parent figures
    val(40, 0.82, 0.17, 2)
    assert ft.val_plot.series["F1 gain"] == [(20.0, pytest.approx(0.05)), (40.0, pytest.approx(0.02))]
    assert ft.val_plot.series["Rand err change"] == [(20.0, pytest.approx(-0.02)), (40.0, pytest.approx(-0.03))]
    assert ft.val_plot.title == "held-out, change from the parent" and "F1" not in ft.val_plot.series


def test_two_corrected_slices_fine_tune_in_two_runs(qtbot, corrected_viewer, waiter, goto, tmp_path):
    """With two corrected slices the button runs the core's cross-fitted fine-tune: two runs, each validated on
    the slice the other trained on, shown as one run's steps; the model kept says which."""
    viewer, panel, mem = corrected_viewer
    goto(viewer, viewer.layers["em"], 2)
    waiter(panel.predict.predict())
    _correct_slice(viewer, mem, 2)
    assert tracking.ledger_of(mem).corrected == {1, 2}
    ft = panel.finetune
    ft.refresh_summary()
    assert "Two runs of half the time each" in ft.data_label.text()
    ft.save_edit.setText(str(tmp_path / "models"))
    _small(ft, 8)
    events = []
    real = ft._on_event
    ft._on_event = lambda job, event: (events.append(event), real(job, event))
    qtbot.mouseClick(ft.run_button, Qt.LeftButton)
    job = ft.job
    waiter(job, timeout=180)
    assert job.state == "done", job.error
    inits = [(e.done, e.info["fold"]) for e in events if e.info.get("init")]
    assert inits == [(0, 1), (4, 2)]  # half the steps each, counted on as one run
    assert [e.done for e in events if "loss" in e.info] == list(range(1, 9))
    assert ft.val_plot.references == {"the parent": 0.0} and "F1 gain" in ft.val_plot.series
    outcome = ft.last_result
    assert outcome.steps == 8 and outcome.parent_metrics is not None
    if not outcome.parent_kept:  # the mean of the two runs: marked at the run's end, said in the done message
        assert ft.val_plot.kept_step == 8 and "the mean of the two runs" in ft.jobs.status.text()


def test_a_parent_the_guard_kept_is_marked_at_step_0_and_said(qtbot, corrected_viewer, waiter, tmp_path, monkeypatch):
    """When nothing beats the parent on the held-out pixels, the panel marks the parent's step-0 validation as the
    kept one (not the parent's own training step) and the done message says the parent was kept and why."""
    import dataclasses

    from napari_neuroedge.training import guard

    real_choose = guard.choose
    monkeypatch.setattr(guard, "choose", lambda parent, candidates: dataclasses.replace(
        real_choose(parent, candidates), kept=parent, parent_kept=True))
    viewer, panel, mem = corrected_viewer
    ft = panel.finetune
    ft.save_edit.setText(str(tmp_path / "m"))
    _small(ft, 4)
    job = waiter(ft.finetune())
    assert job.state == "done" and job.result.parent_kept
    assert ft.val_plot.kept_step == 0 and ft.loss_plot.kept_step == 0
    text = ft.jobs.status.text()
    assert "the kept model (the parent: fine-tuning did not beat it)" in text
    assert "did not improve neuron separation on your held-out pixels" in text
    assert text.startswith("Model '") and "saved with the parent's weights (fine-tuning did not beat it)" in text
    waiter(job.extra["repredict"])


def test_the_panel_imports_the_fine_tune_path_in_the_background_as_it_opens(panel_viewer):
    import sys

    from napari_neuroedge.training.warmup import TRAINING_MODULES

    _, panel = panel_viewer
    thread = panel.finetune.warm_up
    assert thread.name == "neuroedge-warm-up-training"
    thread.join(120)
    assert not thread.is_alive()
    assert "torch._dynamo" in sys.modules and all(m in sys.modules for m in TRAINING_MODULES)
