"""Choosing the torch device: CUDA if present, else Apple MPS, else CPU; a user override wins."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def available_devices() -> list[str]:
    """Devices usable on this machine, best first (always ends with "cpu")."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    found.append("cpu")
    return found


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> the best available device; ``cuda``/``mps`` fail clearly where absent."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device(available_devices()[0])
    base = name.split(":")[0]
    if base not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {name!r}; expected one of {', '.join(DEVICE_CHOICES)}")
    if base != "cpu" and base not in available_devices():
        raise ValueError(f"device {name!r} was asked for but is not available here; found {available_devices()}")
    return torch.device(name)
