"""Data in and out, below everything that computes: stacks, outputs, formats. Imports no model, inference or
training code (``tests/core/test_import_contract.py``).

:mod:`.stacks` (open any stack; open_output/write_array), :mod:`.ngff` (OME-Zarr), :mod:`.atomic`
(never-overwriting writes), :mod:`.chunks` (zarr chunking), :mod:`.units` (voxel-size units),
:mod:`.trainingset` (the training-set folder format) and :mod:`.export` (writes one), :mod:`.workstore` (the
widget's on-disk working arrays, the size policy), :mod:`.overlay` (PNG overlays), :mod:`.sample` (synthetic EM).
"""
