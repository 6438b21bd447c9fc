"""napari-neuroedge: neuron-membrane segmentation of EM stacks.

The package root imports no GUI toolkit: ``napari_neuroedge._napari`` is the only subpackage that touches
napari, qtpy or magicgui.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
