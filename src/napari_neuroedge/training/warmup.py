"""Import what a fine-tune's first steps import, before the job starts.

A fine-tune's first step imports about 900 modules for the first time in the process (``torch.optim.Adam``'s
first call imports ``torch._dynamo`` and, with it, sympy and ``torch.distributed``; the validation imports
scikit-image's morphology and segmentation): about 1 s of imports that hold the GIL in bursts of up to 0.1-0.2 s,
during which napari's window does not respond (issue 22, ``benchmarks/bench_gui_latency.py``). The napari plugin
runs :func:`import_training_path` in a background thread 2 s after its Fine-tune panel opens, so that cost is paid
while the user is still correcting, not in the middle of a job. Importing is idempotent: calling it again costs
nothing, and a job started before it finished simply waits on Python's import locks.
"""

from __future__ import annotations

import importlib
import time

#: the modules a fine-tune imports lazily, in the order a job reaches them
TRAINING_MODULES: tuple[str, ...] = (
    "napari_neuroedge.training.finetune",
    "napari_neuroedge.training.loop",
    "napari_neuroedge.training.guard",
    "napari_neuroedge.training.holdout",
    "napari_neuroedge.training.scoring",
    "napari_neuroedge.training.calibration",
    "napari_neuroedge.training.losses",
    "napari_neuroedge.training.augment",
    "napari_neuroedge.training.targets",
    "napari_neuroedge.inference.postprocess",
    "napari_neuroedge.inference.tta",
    "napari_neuroedge.training.run_folder",
    "napari_neuroedge.models.averaging",
    "napari_neuroedge.metrics",
    "skimage.morphology",
    "skimage.segmentation",
    "torch.optim.swa_utils",
)


def import_training_path() -> float:
    """Import :data:`TRAINING_MODULES` and make the optimiser's first call; returns the seconds it took."""
    t0 = time.perf_counter()
    for name in TRAINING_MODULES:
        importlib.import_module(name)
    import torch
    from skimage.segmentation import watershed  # noqa: F401  (scikit-image loads its submodules lazily)

    layer = torch.nn.Conv2d(1, 1, 1)
    torch.optim.Adam(layer.parameters(), lr=1e-3)  # its first call imports torch._dynamo (and sympy, ...)
    return time.perf_counter() - t0
