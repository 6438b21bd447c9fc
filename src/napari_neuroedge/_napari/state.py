"""The state the widgets of one viewer share: the model list and the selected model, the image chosen for
prediction, the device, and requests between widgets, each change with an event. No Qt and no napari here.

The widgets never hold references to each other: Predict publishes its image and device here, Fine-tune reads
them and asks for a re-prediction with :meth:`SessionState.request_prediction`, which Predict answers
(:attr:`SessionState.predict_requested`). :class:`~.session.Session` is the Qt side of it (jobs, the checkpoint
cache, closing with the window) and forwards the model events as Qt signals.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psygnal import Signal

LOAD_CHECKPOINT = "load checkpoint..."  # the model list's last entry; never a model's name


@dataclass
class PredictionRequest:
    """A widget asks for a prediction of ``scope`` ("current slice" / "all slices") of the image layer ``image``;
    whoever answers sets ``job`` (the job started, or None when it was refused, e.g. the image is gone)."""

    image: str
    scope: str = "current slice"
    job: Any = None


class SessionState:
    """Models (display name -> bundled name or checkpoint path), the selected model, the image chosen for
    prediction and the device ("auto", "cpu", "cuda:0", ...), with their events."""

    models_changed = Signal()
    model_selected = Signal(str)  # display name
    image_selected = Signal(str)  # image layer name ("" = none)
    device_changed = Signal(str)
    predict_requested = Signal(object)  # a PredictionRequest to answer

    def __init__(self) -> None:
        self.models: dict[str, str] = {}
        self.selected_model = ""
        self.image = ""
        self.device = "auto"

    # ------------------------------------------------------------------ models
    def add_bundled(self, names: list[str]) -> None:
        """List the bundled models (their names are their sources); select "default" (else the first) if none is."""
        for name in names:
            self.models.setdefault(name, name)
        if not self.selected_model and self.models:
            self.selected_model = "default" if "default" in self.models else next(iter(self.models))

    def add_model(self, path: str | Path, select: bool = True, name: str | None = None) -> str:
        """Add a checkpoint file to the model list (validated by the caller); returns its display name: the one it
        has if listed already, else ``name`` or its file stem (``<run>/<stem>`` for a run folder's last / best),
        made unique with " (2)", " (3)", ..."""
        path = str(Path(path).expanduser().resolve())
        for display, source in self.models.items():
            if source == path:
                name = display
                break
        else:
            stem = Path(path).stem
            base = name or (f"{Path(path).parent.name}/{stem}" if stem in ("last", "best") else stem)
            name, k = base, 2
            while name in self.models or name == LOAD_CHECKPOINT:
                name, k = f"{base} ({k})", k + 1
            self.models[name] = path
        self.models_changed.emit()
        if select:
            self.select_model(name)
        return name

    def select_model(self, name: str) -> None:
        if name not in self.models:
            raise KeyError(f"no model called {name!r}")
        if name != self.selected_model:
            self.selected_model = name
            self.model_selected.emit(name)

    # ------------------------------------------------------------------ selection, device
    def select_image(self, name: str) -> None:
        """The image layer chosen for prediction ("" when there is none)."""
        if name != self.image:
            self.image = name
            self.image_selected.emit(name)

    def set_device(self, device: str) -> None:
        """The device predictions and fine-tunes run on ("" = "auto")."""
        device = device or "auto"
        if device != self.device:
            self.device = device
            self.device_changed.emit(device)

    # ------------------------------------------------------------------ requests
    def can_predict(self) -> bool:
        """Whether a widget answers prediction requests (a Predict widget is open)."""
        return len(self.predict_requested) > 0

    def request_prediction(self, image: str, scope: str = "current slice") -> PredictionRequest:
        """Ask for a prediction; the returned request holds the job the answering widget started (or None)."""
        request = PredictionRequest(image, scope)
        self.predict_requested.emit(request)
        return request
