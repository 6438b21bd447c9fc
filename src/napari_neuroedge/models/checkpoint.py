"""One checkpoint format: weights + architecture + input normalisation + training provenance.

Saved with ``torch.save`` atomically (temp file + link; never overwriting) and loaded with
``torch.load(weights_only=True)``, so a checkpoint cannot run code. The training config is also written as
JSON beside the checkpoint (``NAME.pt`` -> ``NAME.json``) for people and scripts to read.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io.atomic import atomic_path, atomic_write_bytes
from .bioimageio.load import PackageError, is_package_path, load_package
from ..config import SEED_THRESHOLD, NormConfig, from_dict, to_dict
from .registry import build_model, resolve_checkpoint

FORMAT = "napari-neuroedge-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """The file is not a usable napari-neuroedge checkpoint; the message says why."""


@dataclass
class Checkpoint:
    """Everything needed to rebuild and use a trained model."""

    arch: str
    arch_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    norm: NormConfig = field(default_factory=NormConfig)
    train_config: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    optimizer: dict[str, Any] | None = None  # for resuming
    threshold: float = 0.5  # membrane threshold on the probability, calibrated by `neuroedge calibrate`
    context: int = 0  # px: measured receptive context (tiles overlap by twice it); 0 = not measured
    seed_threshold: float = SEED_THRESHOLD  # instances grow from pixels below this (recalibrated by fine-tuning)
    # the bundled name or path it was loaded from (None: made in memory); not saved. Blockwise workers load it.
    origin: str | None = field(default=None, compare=False, repr=False)

    def build(self) -> nn.Module:
        """The model with these weights, in eval mode on the CPU."""
        if self.arch == "bioimageio":  # a bioimage.io package: its own weights and architecture
            try:
                return load_package(self.arch_kwargs["source"])[0]
            except PackageError as exc:
                raise CheckpointError(str(exc)) from None
        try:
            model = build_model(self.arch, **self.arch_kwargs)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"cannot build architecture {self.arch!r} with {self.arch_kwargs}: {exc}") from exc
        try:
            result = model.load_state_dict(self.state_dict, strict=False)
        except RuntimeError as exc:  # shape mismatches
            detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:4])
            raise CheckpointError(f"weights do not fit architecture {self.arch!r} {self.arch_kwargs}: {detail}") from None
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(f"weights do not fit architecture {self.arch!r}: missing "
                                  f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
        model.context_px = int(self.context)  # read by TorchPredictor to plan tile overlaps
        return model.eval()


def library_versions() -> dict[str, str]:
    import numpy

    from .. import __version__

    return {"napari_neuroedge": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def make_checkpoint(model: nn.Module, arch: str, arch_kwargs: dict[str, Any], norm: NormConfig,
                    train_config: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None,
                    step: int = 0, optimizer: dict[str, Any] | None = None, context: int = 0) -> Checkpoint:
    """A checkpoint of ``model``'s current weights (copied to the CPU); ``context``: the architecture's measured
    receptive context in px (0 = not measured)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    prov = {"versions": library_versions(), **(provenance or {})}
    return Checkpoint(arch, dict(arch_kwargs), state, norm, train_config, prov, step, optimizer, context=context)


def save_checkpoint(ckpt: Checkpoint, path: str | Path, write_json: bool = True) -> Path:
    """Write ``ckpt`` to ``path`` atomically; refuses to overwrite. Also writes ``path.with_suffix('.json')``."""
    path = Path(path)
    payload = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "arch": ckpt.arch, "arch_kwargs": ckpt.arch_kwargs,
        "state_dict": ckpt.state_dict, "norm": to_dict(ckpt.norm), "train_config": ckpt.train_config,
        "provenance": json.loads(json.dumps(ckpt.provenance, default=str)), "step": int(ckpt.step),
        "threshold": float(ckpt.threshold), "context": int(ckpt.context),
        "seed_threshold": float(ckpt.seed_threshold),
    }
    if ckpt.optimizer is not None:
        payload["optimizer"] = ckpt.optimizer
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    if write_json:
        meta = {k: payload[k] for k in ("format", "format_version", "arch", "arch_kwargs", "norm", "train_config",
                                         "provenance", "step", "threshold", "context",
                                         "seed_threshold")}
        json_path = path.with_suffix(".json")
        if not json_path.exists():
            atomic_write_bytes(json_path, json.dumps(meta, indent=2).encode())
    return path


def load_checkpoint(name_or_path: str | Path) -> Checkpoint:
    """Load and validate a checkpoint by bundled name ("default") or path; errors say what is wrong."""
    ckpt = _load(resolve_checkpoint(name_or_path))
    ckpt.origin = str(name_or_path)
    return ckpt


def _load(path: Path) -> Checkpoint:
    if is_package_path(path):
        return _package_checkpoint(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        size = path.stat().st_size
        raise CheckpointError(f"{path}: not a readable checkpoint ({size} bytes; truncated or not a torch file?): "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: a torch file, but not a napari-neuroedge checkpoint (no format={FORMAT!r} "
                              "entry); plain state_dicts must be converted with the model's architecture")
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {payload['format_version']} is newer than this "
                              f"napari-neuroedge supports ({FORMAT_VERSION}); upgrade the plugin")
    missing = [k for k in ("arch", "arch_kwargs", "state_dict") if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    try:
        norm = from_dict(NormConfig, payload.get("norm") or {})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad normalisation entry: {exc}") from exc
    try:
        threshold = float(payload.get("threshold", 0.5))
    except (TypeError, ValueError):
        threshold = float("nan")
    if not 0.0 < threshold < 1.0:
        raise CheckpointError(f"{path}: membrane threshold {payload.get('threshold')!r} is not a probability "
                              "strictly between 0 and 1")
    try:
        seed = float(payload.get("seed_threshold", SEED_THRESHOLD))
    except (TypeError, ValueError):
        seed = float("nan")
    if not 0.0 < seed < 1.0:
        raise CheckpointError(f"{path}: instance seed threshold {payload.get('seed_threshold')!r} is not a "
                              "probability strictly between 0 and 1")
    return Checkpoint(payload["arch"], dict(payload["arch_kwargs"]), payload["state_dict"], norm,
                      payload.get("train_config"), dict(payload.get("provenance") or {}), int(payload.get("step", 0)),
                      payload.get("optimizer"), threshold, max(0, int(payload.get("context", 0) or 0)), seed)


def _package_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint standing for a bioimage.io package (weights stay in the package; :meth:`build` loads them)."""
    try:
        _, meta = load_package(path)
    except PackageError as exc:
        raise CheckpointError(str(exc)) from None
    except Exception as exc:  # bioimageio raises many types on broken packages
        raise CheckpointError(f"{path}: cannot read as a bioimage.io package ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]})") from exc
    return Checkpoint("bioimageio", {"source": str(path)}, {}, meta["norm"],
                      provenance={"name": meta["name"], "bioimageio_package": str(path)}, threshold=meta["threshold"])


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of a checkpoint (or any) file, read in 1 MB blocks; cached per path, modification
    time and size, so asking again for an unchanged file costs a ``stat``."""
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=32)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_model(name_or_path: str | Path) -> tuple[nn.Module, Checkpoint]:
    """(model in eval mode on the CPU, its checkpoint) for a bundled name or checkpoint path."""
    ckpt = load_checkpoint(name_or_path)
    return ckpt.build(), ckpt
