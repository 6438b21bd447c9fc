"""The napari plugin: reader, writer, sample data and the NeuroEdge dock widgets.

This is the only subpackage that imports napari, qtpy, magicgui or superqt. Importing it first hides triton
from torch (see :mod:`._triton_guard`), because importing triton inside a running viewer crashes under Mesa.
"""

from . import _triton_guard  # noqa: F401  (must run before anything here imports torch)

__all__: list[str] = []
