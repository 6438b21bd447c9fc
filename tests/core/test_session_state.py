"""The widgets' shared state without Qt: models, selection, device and requests between widgets, with events."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_neuroedge._napari.state import LOAD_CHECKPOINT, SessionState


def test_models_are_named_listed_once_and_selected_with_events(tmp_path: Path) -> None:
    state = SessionState()
    state.add_bundled(["small", "default"])
    assert state.selected_model == "default" and state.models == {"small": "small", "default": "default"}
    events: list[tuple[str, object]] = []
    state.models_changed.connect(lambda: events.append(("models", None)))
    state.model_selected.connect(lambda name: events.append(("selected", name)))
    run = tmp_path / "run"
    run.mkdir()
    assert state.add_model(run / "best.pt") == "run/best"
    assert state.add_model(tmp_path / "ft.pt", select=False) == "ft"
    assert state.add_model(tmp_path / "x" / "ft.pt", select=False) == "ft (2)"
    assert state.add_model(run / "best.pt") == "run/best"  # listed already: the same name, not a copy
    assert state.add_model(tmp_path / "lc.pt", name=LOAD_CHECKPOINT) == f"{LOAD_CHECKPOINT} (2)"
    assert state.models["run/best"] == str((run / "best.pt").resolve())
    assert events == [("models", None), ("selected", "run/best"), ("models", None), ("models", None),
                      ("models", None), ("models", None), ("selected", f"{LOAD_CHECKPOINT} (2)")]
    with pytest.raises(KeyError, match="no model called 'nope'"):
        state.select_model("nope")


def test_device_and_image_say_when_they_change() -> None:
    state = SessionState()
    seen: list[str] = []
    state.device_changed.connect(seen.append)
    state.image_selected.connect(seen.append)
    state.set_device("cpu")
    state.set_device("cpu")
    state.set_device("")
    state.select_image("em")
    assert seen == ["cpu", "auto", "em"] and state.device == "auto" and state.image == "em"


def test_a_prediction_request_is_answered_by_whoever_predicts() -> None:
    state = SessionState()
    assert not state.can_predict()
    assert state.request_prediction("em").job is None  # nobody answers: no job

    class Predictor:
        def answer(self, request) -> None:
            request.job = f"job for {request.image}, {request.scope}"

    predictor = Predictor()
    state.predict_requested.connect(predictor.answer)
    assert state.can_predict()
    assert state.request_prediction("em", "all slices").job == "job for em, all slices"
    del predictor  # the answering widget is gone: its connection goes with it
    assert not state.can_predict()
