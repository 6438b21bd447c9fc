"""The option forms of Predict and Fine-tune: plain-value magicgui widgets whose values outlive the session
(:func:`.common.persisted_form`), and the Fine-tune form read as the core's
:class:`~napari_neuroedge.config.FinetuneOptions`. A widget builds its form here and lays it out itself."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, Label, LineEdit, SpinBox

from ...config import SEED_THRESHOLD, FinetuneOptions
from ..actions import gui_threads
from .common import persisted_form

TTA_CHOICES = {"off": 1, "6 (rotations + flips)": 6, "8 (full dihedral)": 8}
SCOPES = ("current slice", "all slices")


def predict_form(found: list[str]) -> Any:
    """Predict's settings (``found``: the devices torch found). The thresholds are the chosen model's (the widget
    sets them when a model is chosen) and "replace my corrections" is asked anew: those are not kept."""
    return persisted_form("predict", [
        SpinBox(name="tile", label="tile size (px, 0 = auto)", min=0, max=4096, step=32, value=0,
                tooltip="largest tile; auto (0) = as large as free memory allows, up to 2048 px; an image "
                "that fits is predicted in one pass"),
        SpinBox(name="context", label="tile context (px)", min=0, max=512, step=8, value=0,
                tooltip="tile overlap on each side; 0 = the model's measured receptive context"),
        ComboBox(name="tta", label="TTA", choices=list(TTA_CHOICES.items()), value=1),
        ComboBox(name="device", choices=["auto"] + found, value="auto"),
        Label(name="found", value=", ".join(found), tooltip="the devices torch found here"),
        FloatSpinBox(name="threshold", min=0.01, max=0.99, step=0.05, value=0.5,
                     tooltip="membrane where the boundary probability is at least this; set to the model's "
                     "calibrated threshold when you choose a model"),
        ComboBox(name="scope", choices=list(SCOPES)),
        CheckBox(name="instances", text="neuron instances (Labels)"),
        FloatSpinBox(name="seed_threshold", label="seed threshold", min=0.01, max=0.99, step=0.05,
                     value=SEED_THRESHOLD, tooltip="neuron instances grow from pixels whose boundary "
                     "probability is below this; lower it if cells merge through faint membranes"),
        CheckBox(name="uncertainty", text="TTA uncertainty (Image)"),
        CheckBox(name="overwrite", text="replace my corrections",
                 tooltip="predict over the slices you edited or marked corrected too (their labels are lost)"),
    ], transient=("threshold", "seed_threshold", "overwrite"))


def finetune_form(models_dir: Any) -> Any:
    """Fine-tune's advanced settings, defaulting to the one-click recipe (the same defaults as ``neuroedge
    finetune``); "save models in" (``models_dir``) follows ``$NEUROEDGE_MODELS_DIR`` each session."""
    d = FinetuneOptions()
    return persisted_form("finetune", [
        SpinBox(name="time", label="time (s)", min=10, max=100_000, step=10, value=int(d.time_limit_s),
                tooltip="training time; the learning-rate schedule follows it"),
        SpinBox(name="steps", label="steps (at most)", min=1, max=1_000_000, value=d.steps),
        FloatSpinBox(name="holdout", label="held out for validation", min=0.0, max=0.5, step=0.05,
                     value=d.holdout, tooltip="fraction of each corrected slice held out, in blocks spread over "
                     "it that hold their share of the pixels you changed: never trained on, validated on"),
        SpinBox(name="crop", label="crop size (px)", min=32, max=2048, step=32, value=d.crop),
        FloatSpinBox(name="lr", label="learning rate", min=1e-6, max=1.0, step=1e-6, value=d.lr),
        SpinBox(name="batch", min=1, max=64, value=d.batch),
        FloatSpinBox(name="replay", label="replay fraction", min=0.0, max=1.0, step=0.05,
                     value=d.replay_fraction, tooltip="fraction of training crops drawn from the original "
                     "data; used only when a replay folder is set"),
        LineEdit(name="replay_data", label="replay data"),
        FloatSpinBox(name="corrected_weight", label="corrected-pixel weight", min=1.0, max=50.0,
                     value=d.corrected_weight, tooltip="loss weight of the pixels you changed relative to the "
                     "others"),
        FloatSpinBox(name="parent_weight", label="share of the parent", min=0.0, max=1.0, step=0.1,
                     value=d.parent_weight, tooltip="a blend the guard also tries: this share of the parent's weights, "
                     "the rest fine-tuned (besides 0, 0.35 and 0.7); it keeps whichever beats the parent on the "
                     "held-out pixels, else the parent"),
        LineEdit(name="save_dir", label="save models in", value=str(models_dir)),
    ], transient=("save_dir",))


def finetune_options(form: Any, device: str) -> FinetuneOptions:
    """The :func:`finetune_form` as the core's FinetuneOptions on ``device`` (untouched form = the CLI's
    defaults), with all cores but the GUI's."""
    f = {name: getattr(form, name).native.value() for name in ("time", "steps", "crop", "lr", "batch", "holdout",
                                                              "replay", "corrected_weight", "parent_weight")}
    return replace(FinetuneOptions(), time_limit_s=float(f["time"]), steps=f["steps"], crop=f["crop"],
                   lr=float(f["lr"]), batch=f["batch"], holdout=float(f["holdout"]),
                   replay_fraction=float(f["replay"]), corrected_weight=float(f["corrected_weight"]),
                   parent_weight=float(f["parent_weight"]), device=device, threads=gui_threads())
