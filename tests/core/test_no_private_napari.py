"""The plugin uses napari's public API only: no private window attributes, task-status internals or napari._ modules
(issue 13: they change between napari releases without notice)."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "napari_neuroedge"
PRIVATE = re.compile(r"window\._|_qt_window|_qt_viewer|_register_task_status|_update_task_status"
                     r"|\bnapari\._|from napari\._|import napari\._")


def _hits(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if PRIVATE.search(line)]


def test_the_pattern_catches_private_napari_names():
    bad = ["register = getattr(window, '_register_task_status', None)", "qt = viewer.window._qt_window",
           "from napari._qt.dialogs.qt_notification import NapariQtNotification", "viewer.window._update_task_status(x)"]
    assert all(_hits(line) for line in bad)
    assert not _hits("from napari.qt.threading import create_worker\nviewer.window.add_dock_widget(w)")


def test_package_uses_no_private_napari_names():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    found = {str(f.relative_to(PACKAGE)): _hits(f.read_text()) for f in files}
    assert {k: v for k, v in found.items() if v} == {}
