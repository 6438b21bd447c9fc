"""The GUI runs on PyQt6 (the `qt` extra), so napari shows no PyQt5 deprecation warning."""

from __future__ import annotations

import warnings


def test_qt_binding_is_pyqt6_and_napari_shows_no_pyqt5_deprecation(make_napari_viewer, qtbot):
    import qtpy
    from napari._qt import qt_main_window

    assert qtpy.API_NAME == "PyQt6"
    assert qt_main_window.SHOW_QT_WARNING is False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        viewer = make_napari_viewer(show=True)
        qtbot.wait(50)
    assert not [w for w in caught if "PyQt5" in str(w.message)]
