"""The NeuroEdge dock widgets: Predict, Correct, Export, Fine-tune, and the combined NeuroEdge panel."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QScrollArea, QTabWidget, QVBoxLayout, QWidget

from .correct import CorrectWidget
from .export import ExportWidget
from .finetune import FinetuneWidget
from .predict import PredictWidget

__all__ = ["CorrectWidget", "ExportWidget", "FinetuneWidget", "NeuroEdgePanel", "PredictWidget"]


def _scroll(widget: QWidget) -> QScrollArea:
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setWidget(widget)
    return area


class NeuroEdgePanel(QWidget):
    """All four steps in one dock widget, as tabs: Predict, Correct, Export, Fine-tune."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.predict = PredictWidget(napari_viewer, scroll=False)
        self.correct = CorrectWidget(napari_viewer, scroll=False)
        self.export = ExportWidget(napari_viewer, scroll=False)
        self.finetune = FinetuneWidget(napari_viewer, scroll=False)
        self.tabs = QTabWidget()
        for title, widget in (("Predict", self.predict), ("Correct", self.correct), ("Export", self.export),
                              ("Fine-tune", self.finetune)):
            self.tabs.addTab(_scroll(widget), title)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(self.tabs)
        self.setMinimumWidth(340)
