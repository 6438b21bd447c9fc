"""Keep triton out of a process that already has an OpenGL context.

Importing triton after napari created its OpenGL (Mesa) context segfaults the process; torch imports triton
lazily through ``torch._dynamo`` (torchvision, and even the first ``torch.optim.Adam`` step, pull it in). Marking
triton as absent (``sys.modules["triton"] = None``) before torch looks for it makes torch treat it as not
installed: eager CPU/CUDA kernels, training and inference are unaffected; only ``torch.compile``'s triton
backend is lost. Set ``NEUROEDGE_ALLOW_TRITON=1`` to opt out.
"""

from __future__ import annotations

import os
import sys

ENV_ALLOW = "NEUROEDGE_ALLOW_TRITON"


def install() -> bool:
    """Hide triton unless allowed or already imported; returns True if this call hid it."""
    if os.environ.get(ENV_ALLOW, "").strip().lower() in ("1", "true", "yes"):
        return False
    if "triton" in sys.modules:  # imported before (then before any GL context) or already hidden
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]
    return True


def is_hidden() -> bool:
    """True while triton is marked absent in this process."""
    return "triton" in sys.modules and sys.modules["triton"] is None


INSTALLED = install()
