"""Numeric precision and memory layout, chosen for the hardware at hand.

``auto`` picks, per device: float16 autocast on CUDA, bfloat16 autocast on CPUs with native bf16 arithmetic
(AMX-bf16 or AVX512-bf16, as reported by torch), float32 elsewhere (MPS, and CPUs without bf16, where torch
emulates bf16 and runs several times *slower* than fp32: measured 7.5x on an AVX2-only AMD EPYC). On the CPU,
inference also runs in ``channels_last`` layout (oneDNN's preferred layout: 1.7x faster than contiguous fp32
for the default U-Net on that EPYC). The choice is recorded in checkpoints and job logs by its name.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..config import PRECISIONS

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """True where this CPU computes bf16 in hardware (AMX tiles or AVX512-bf16)."""
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except RuntimeError:  # pragma: no cover - probes are best effort
            continue
    return False


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """``requested`` in PRECISIONS -> "fp32" | "bf16" | "fp16" for ``device`` (errors say what fits)."""
    name = (requested or "auto").lower()
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; expected one of {', '.join(PRECISIONS)}")
    kind = torch.device(device).type
    if name == "auto":
        if kind == "cuda":
            return "fp16"
        if kind == "cpu" and cpu_has_native_bf16():
            return "bf16"
        return "fp32"
    if name == "fp16" and kind == "cpu":
        raise ValueError("fp16 is for CUDA; on the CPU use bf16 (fast only with AMX/AVX512-bf16) or fp32")
    return name


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """The autocast context for a resolved ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision])


def uses_channels_last(device: torch.device | str) -> bool:
    """Whether inference on ``device`` runs in channels_last layout (the CPU: oneDNN's fast path)."""
    return torch.device(device).type == "cpu"


def summary(precision: str, device: torch.device | str) -> str:
    """One line naming the device, precision and layout, e.g. ``"cpu, fp32, channels_last"``."""
    parts = [str(device), "fp32" if precision == "fp32" else f"{precision} autocast"]
    if uses_channels_last(device):
        parts.append("channels_last")
    return ", ".join(parts)
