"""The NeuroEdge dock widgets: Predict, Correct, Export, Fine-tune, and the combined NeuroEdge panel."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QSize
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
        # every tab's controls fit from the minimum width on (no horizontal scrolling, "Cancel" whole)
        need = max(w.minimumSizeHint().width() for w in (self.predict, self.correct, self.export, self.finetune))
        self.setMinimumWidth(max(self.MIN_WIDTH, need + self.FRAME))

    MIN_WIDTH = 340
    FRAME = 40  # the panel's margins, the tab and scroll-area frames and a vertical scroll bar
    ROOM = 16  # what napari opens the dock at: the controls with a little room, not a third of the window

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        """napari sizes a new dock from this: the content's width, not the widest word-wrapped text's."""
        return QSize(self.minimumWidth() + self.ROOM, super().sizeHint().height())
