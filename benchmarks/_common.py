"""Shared helpers of the benchmark scripts: threads, timing, peak memory of fresh subprocesses, printing.

Timing: :func:`interleaved` runs several candidates round-robin (warm-up first, then ``repeats`` rounds) and
keeps the median per candidate, so slow phases of a busy machine hit every candidate alike. Memory: a job is run
in a fresh Python subprocess (:func:`run_child`) that reports its own peak resident set size via
:func:`memory_report` on a ``RESULT {json}`` line, so one job's memory never leaks into another's figure.
Ratio lines are printed as ``RATIO <key> = <value>  (<note>)`` so tests and people can grep them.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20


# ------------------------------------------------------------------------------------------ environment

def set_threads(n: int) -> int:
    """Fix torch's intra-op threads to ``n`` (<= 0: leave torch's default); returns the count in use."""
    import torch

    if n > 0:
        torch.set_num_threads(n)
    return int(torch.get_num_threads())


def environment_lines(device: str = "cpu") -> list[str]:
    """One-line facts about this machine and the libraries, for the head of every benchmark's output."""
    import numpy as np
    import torch

    lines = [f"python {platform.python_version()} on {platform.platform()}",
             f"cpu count {os.cpu_count()}, load average {_loadavg()}",
             f"torch {torch.__version__}, intra-op threads {torch.get_num_threads()}, numpy {np.__version__}",
             f"device {device}" + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else "")]
    for dist in ("monai", "segmentation-models-pytorch"):  # versions without importing (monai takes seconds)
        try:
            lines.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            lines.append(f"{dist} not installed")
    return lines


def _loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def print_header(title: str, device: str = "cpu", quick: bool = False) -> None:
    print(f"# {title}{' (--quick: tiny sizes, numbers are only a smoke test)' if quick else ''}")
    for line in environment_lines(device):
        print(f"  {line}")
    sys.stdout.flush()


# ------------------------------------------------------------------------------------------------ timing

def sync(device: Any = "cpu") -> None:
    """Wait for queued GPU work so wall-clock timings are real (no-op on CPU)."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@dataclass
class Timing:
    """Seconds of each repeat; ``median`` is what the ratios use."""

    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return float(statistics.median(self.times)) if self.times else float("nan")

    def __str__(self) -> str:
        spread = f" [{min(self.times):.3f}..{max(self.times):.3f}]" if len(self.times) > 1 else ""
        return f"{self.median:.3f} s (median of {len(self.times)}{spread})"


def interleaved(candidates: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                device: Any = "cpu") -> dict[str, Timing]:
    """Time each candidate ``repeats`` times, round-robin, after ``warmup`` untimed calls of each."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
            sync(device)
    out = {name: Timing() for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            out[name].times.append(time.perf_counter() - t0)
    return out


class Stopwatch:
    """Wall time since creation, for "elapsed" notes in long runs."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


# ------------------------------------------------------------------------------------------------ memory

def _proc_status(key: str) -> int | None:
    """A /proc/self/status entry (kB there) in bytes; None where /proc is unavailable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def current_rss() -> tuple[int, int]:
    """(resident set size, anonymous part) of this process in bytes.

    The anonymous part is RssAnon from /proc (Linux): heap and array memory, without the file pages of
    memory-mapped inputs/outputs that the kernel may drop at will; elsewhere psutil's RSS minus shared pages.
    """
    rss, anon = _proc_status("VmRSS"), _proc_status("RssAnon")
    if rss is not None and anon is not None:
        return rss, anon
    import psutil

    info = psutil.Process().memory_info()
    shared = int(getattr(info, "shared", 0))
    return int(info.rss), int(info.rss) - shared


def peak_rss() -> int:
    """This process's peak RSS in bytes: VmHWM (Linux; reset by exec, so a fresh subprocess starts clean)."""
    hwm = _proc_status("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class AnonSampler:
    """Samples the anonymous RSS every ``every`` s in a thread while active; ``peak`` in bytes."""

    def __init__(self, every: float = 0.005) -> None:
        self.every = every
        self.peak = current_rss()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, current_rss()[1])

    def __enter__(self) -> AnonSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss()[1])


def memory_report(job: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
    """Run ``job`` and return its result plus memory in bytes: baseline RSS before it, peak RSS, peak anon RSS."""
    base_rss, base_anon = current_rss()
    t0 = time.perf_counter()
    with AnonSampler() as sampler:
        extra = job() or {}
    return {"wall_s": time.perf_counter() - t0, "base_rss": base_rss, "base_anon": base_anon,
            "peak_rss": peak_rss(), "peak_anon": sampler.peak, **extra}


def emit_result(result: dict[str, Any]) -> None:
    """Child side: print the one line :func:`run_child` parses."""
    print("RESULT " + json.dumps(result), flush=True)


def run_child(args: Sequence[str], timeout: float | None = None) -> dict[str, Any]:
    """Run ``python *args`` in a fresh process; return the dict of its ``RESULT`` line (error if none)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=str(REPO))
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT "):]))
    raise RuntimeError(f"child {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}"
                       f"\n{proc.stderr[-4000:]}")


# ---------------------------------------------------------------------------------------------- printing

def mib(n_bytes: float) -> str:
    return f"{n_bytes / MiB:.0f} MiB"


def ratio_line(key: str, value: float, note: str = "") -> str:
    """Print and return ``RATIO key = value  (note)``; the smoke test greps these."""
    line = f"RATIO {key} = {value:.3f}" + (f"  ({note})" if note else "")
    print(line, flush=True)
    return line


def target_note(value: float, op: str, target: float, what: str = "") -> str:
    """"target <= 1.10: met" style note for :func:`ratio_line`."""
    ok = {"<=": value <= target, ">=": value >= target, "<": value < target, ">": value > target}[op]
    return f"{what}target {op} {target:g}: {'met' if ok else 'NOT met'}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(str(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def print_readme_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], caption: str) -> None:
    print(f"\n## README table\n\n{caption}\n")
    print(markdown_table(headers, rows), flush=True)
