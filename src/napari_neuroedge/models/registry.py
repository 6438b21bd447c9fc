"""Model architectures by name, and the bundled (shipped) checkpoints by name."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

WEIGHTS_DIR = Path(__file__).parent / "weights"


def _unet(**kw: Any) -> nn.Module:
    from .unet import UNet

    return UNet(**kw)


def _casenet(**kw: Any) -> nn.Module:
    from .casenet import CASENet

    return CASENet(**kw)


def _dff(**kw: Any) -> nn.Module:
    from .dff import DFF

    return DFF(**kw)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "unet": _unet,
    "casenet": _casenet,
    "dff": _dff,
}

# named presets: architecture + keyword arguments
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "unet": ("unet", {"base": 16, "depth": 4}),
    "unet-large": ("unet", {"base": 32, "depth": 4}),
    "casenet": ("casenet", {"depth": 50}),
    "dff": ("dff", {"depth": 50}),
}


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """A fresh model: ``arch`` is an architecture or preset name; kwargs override the preset's."""
    if arch in PRESETS:
        base, preset_kw = PRESETS[arch]
        kwargs = {**preset_kw, **kwargs}
        arch = base
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown model {arch!r}; expected one of {', '.join(sorted(PRESETS))}")
    return ARCHITECTURES[arch](**kwargs)


def resolve_arch(name: str, kwargs: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """(architecture, full kwargs) for an architecture or preset name."""
    kwargs = dict(kwargs or {})
    if name in PRESETS:
        base, preset_kw = PRESETS[name]
        return base, {**preset_kw, **kwargs}
    if name in ARCHITECTURES:
        return name, kwargs
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(sorted(PRESETS))}")


def bundled_models() -> dict[str, Path]:
    """Shipped checkpoints: name -> path, every ``weights/NAME.pt`` (each with its model card ``NAME.md``).

    ``default`` is the default membrane model (a U-Net); ``casenet-r18`` and ``dff-r18`` are the seed's edge
    detectors on ResNet-18 backbones, trained on ISBI 2012 at the U-Net's CPU budget (issue 25).
    """
    return {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.pt"))}


def models_dir() -> Path:
    """Where fine-tuned checkpoints go: $NEUROEDGE_MODELS_DIR or ~/.neuroedge/models."""
    env = os.environ.get("NEUROEDGE_MODELS_DIR", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".neuroedge" / "models"


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A bundled model name ("default"), a fine-tuned model's name (in :func:`models_dir`) or a checkpoint path."""
    bundled = bundled_models()
    if str(name_or_path) in bundled:
        return bundled[str(name_or_path)]
    path = Path(name_or_path)
    finetuned = models_dir() / f"{name_or_path}.pt"
    if path.suffix == "" and not path.exists() and finetuned.is_file():
        return finetuned
    if path.suffix == "" and not path.exists():
        raise FileNotFoundError(f"no bundled model called {str(name_or_path)!r} (have: {', '.join(bundled) or 'none'}) "
                                "and no such file")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    return path
