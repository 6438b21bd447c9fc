"""Shared fixtures: small synthetic EM data and the path of the real ISBI 2012 data (skipped where absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# qtpy prefers PyQt5 when both bindings are installed; the project targets PyQt6 (the `qt` extra)
os.environ.setdefault("QT_API", "pyqt6")

ISBI_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012"


@pytest.fixture(scope="session")
def synth():
    """A 3-slice 96x112 synthetic EM stack (uint8) with its membrane labels."""
    from napari_neuroedge.io.sample import synthetic_em

    return synthetic_em((3, 96, 112), cell_size=24, seed=1)


@pytest.fixture(scope="session")
def isbi_dir() -> Path:
    if not (ISBI_DIR / "train-volume.tif").exists():
        pytest.skip(f"ISBI 2012 data not found at {ISBI_DIR}")
    return ISBI_DIR


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
