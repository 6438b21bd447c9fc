"""The Predict widget's "Export model (bioimage.io)" button: packages the selected model in a background thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QFileDialog, QPushButton

from ..io.atomic import OutputExistsError
from ._qt_utils import notify

BUTTON_TEXT = "Export model (bioimage.io)"


def ask_package_path(widget: Any, name: str) -> str:
    """Ask where to write the package (tests replace this)."""
    path, _ = QFileDialog.getSaveFileName(widget, "Export a bioimage.io model package",
                                          str(Path.home() / f"{Path(name).stem}.zip"), "bioimage.io package (*.zip)")
    return path


def add_export_button(widget: Any) -> QPushButton:
    """A button that exports ``widget.session.selected_model``; returns it for the widget's layout."""
    button = QPushButton(BUTTON_TEXT)
    button.setToolTip("write the selected model as a bioimage.io package (for ilastik, deepImageJ, "
                      "bioimageio.core); TTA and the threshold are documented in it, not part of the spec")
    button.clicked.connect(lambda: export_selected(widget))
    widget.export_package_button = button
    return button


def export_selected(widget: Any, path: str | None = None) -> Any:
    """Start packaging the selected model into ``path`` (asked if None); returns the napari worker or None."""
    from napari.qt.threading import create_worker

    from ..models.bioimageio.export import package_model

    name = widget.session.selected_model
    if not name:
        notify("No model selected to export.", "warning")
        return None
    path = path if path is not None else widget.ask_package_path(name)
    if not path:
        return None
    if not str(path).lower().endswith(".zip"):
        path = f"{path}.zip"
    if Path(path).exists():
        notify(f"{OutputExistsError(path)}.", "error")
        return None
    worker = create_worker(package_model, widget.session.models[name], path, _start_thread=False)
    widget.export_package_button.setEnabled(False)
    worker.returned.connect(lambda out: notify(f"Wrote the bioimage.io package {out}.", "info"))
    worker.errored.connect(lambda exc: notify(f"Cannot export {name}: {exc}", "error"))
    worker.finished.connect(lambda: widget.export_package_button.setEnabled(True))
    worker.start()
    return worker
