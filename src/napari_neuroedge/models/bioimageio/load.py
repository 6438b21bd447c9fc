"""Use a bioimage.io model package (zip, or its rdf.yaml) as a napari-neuroedge model.

Accepted: a 2D model with one input (batch?, channel of 1, y, x) and one output of one channel (a boundary
map), with ``pytorch_state_dict`` or TorchScript weights, and no preprocessing or a ``scale_range`` over y/x
(our per-slice percentile normalisation). The output is taken as a probability when the package says its range
is [0, 1] or ends in a sigmoid, otherwise as logits. It then runs through our pipeline: tiling, TTA and
thresholds (the threshold from ``config.neuroedge.threshold`` when the package was written by us, else 0.5).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from torch.nn import functional as F

from ...config import NormConfig

ARCH = "bioimageio"


class PackageError(ValueError):
    """The package is not a usable bioimage.io boundary model; the message says why (the checkpoint loader turns
    it into a :class:`~napari_neuroedge.models.checkpoint.CheckpointError`)."""


def is_package_path(path: str | Path) -> bool:
    """True for ``*.zip`` files and ``*rdf.yaml`` / ``*bioimageio.yaml`` descriptions."""
    name = str(path).lower()
    return name.endswith(".zip") or name.endswith("rdf.yaml") or name.endswith("bioimageio.yaml")


class PackageModel(nn.Module):
    """A package's network as our models look: (N, 1, H, W) any size -> (N, 1, H, W).

    Inputs are reflect-padded to the package's valid size (``min + k * step``) and the output cropped back.
    ``returns_probability`` tells :class:`~napari_neuroedge.inference.predict.TorchPredictor` not to apply a
    sigmoid again.
    """

    def __init__(self, net: nn.Module, min_size: int, step: int, returns_probability: bool) -> None:
        super().__init__()
        self.net, self.min_size, self.step = net, int(min_size), max(int(step), 1)
        self.returns_probability = bool(returns_probability)
        self.multiple = self.step if self.min_size % self.step == 0 else 1

    def _valid(self, n: int) -> int:
        if n <= self.min_size:
            return self.min_size
        return self.min_size + -(-(n - self.min_size) // self.step) * self.step

    def forward(self, x: Any) -> Any:
        h, w = x.shape[-2:]
        ph, pw = self._valid(h) - h, self._valid(w) - w
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if (ph < h and pw < w) else "replicate")
        return self.net(x)[..., :h, :w]


def _fail(source: Any, why: str) -> None:
    raise PackageError(f"{source}: not a usable bioimage.io boundary model: {why}")


def _describe(source: str | Path) -> Any:
    from bioimageio.spec import InvalidDescr, load_model_description

    descr = load_model_description(str(source), perform_io_checks=False)
    if isinstance(descr, InvalidDescr):
        _fail(source, "invalid description (run `bioimageio validate` on it)")
    if getattr(descr, "format_version", "0.5").startswith("0.4"):
        _fail(source, "model spec 0.4; convert it to 0.5 (bioimageio update-format)")
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        _fail(source, f"{len(descr.inputs)} inputs and {len(descr.outputs)} outputs; expected one of each")
    return descr


def _space_and_channels(tensor: Any, source: Any) -> tuple[dict[str, Any], int]:
    axes = {str(a.id): a for a in tensor.axes}
    kinds = sorted(str(a.type) for a in tensor.axes)
    if kinds not in (["batch", "channel", "space", "space"], ["batch", "space", "space"]) or \
            not {"y", "x"} <= set(axes):
        _fail(source, f"tensor {tensor.id} has axes {[str(a.id) for a in tensor.axes]}; expected (batch, channel, y, x)")
    channel = next((a for a in tensor.axes if str(a.type) == "channel"), None)
    return axes, (len(channel.channel_names) if channel is not None else 1)


def package_norm(descr: Any, source: Any) -> NormConfig:
    """Our normalisation for the package's input preprocessing: ``scale_range`` over (y, x) -> percentile."""
    steps = [p for p in descr.inputs[0].preprocessing if str(p.id) != "ensure_dtype"]
    if len(steps) == 1 and str(steps[0].id) == "scale_range":
        kw = steps[0].kwargs
        if kw.axes is not None and sorted(str(a) for a in kw.axes) != ["x", "y"]:
            _fail(source, f"scale_range over axes {list(map(str, kw.axes))}; only per-slice (y, x) is supported")
        return NormConfig(mode="percentile", low=float(kw.min_percentile), high=float(kw.max_percentile))
    _fail(source, f"input preprocessing {[str(p.id) for p in steps]} is not supported (only one scale_range "
                  "over y/x, which is our per-slice percentile normalisation)")
    raise AssertionError  # unreachable


def load_package(source: str | Path) -> tuple[PackageModel, dict[str, Any]]:
    """(model in eval mode on the CPU, {"norm", "threshold", "name"}) for a bioimage.io package or rdf.yaml."""
    import torch

    descr = _describe(source)
    inp, out = descr.inputs[0], descr.outputs[0]
    in_axes, in_ch = _space_and_channels(inp, source)
    _, out_ch = _space_and_channels(out, source)
    if in_ch != 1 or out_ch != 1:
        _fail(source, f"{in_ch} input and {out_ch} output channels; expected one grey channel in and one boundary "
                      "map out")
    sizes = [in_axes[a].size for a in ("y", "x")]
    if all(isinstance(s, int) for s in sizes):
        min_size, step = int(sizes[0]), 1
        if sizes[0] != sizes[1]:
            _fail(source, f"fixed input size {sizes}; only square or parameterized sizes are supported")
    else:
        min_size, step = int(getattr(sizes[0], "min", 1)), int(getattr(sizes[0], "step", 1))
    post = [str(p.id) for p in out.postprocessing if str(p.id) != "ensure_dtype"]
    if post not in ([], ["sigmoid"]):
        _fail(source, f"output postprocessing {post} is not supported (only none or sigmoid)")
    rng = getattr(getattr(out, "data", None), "range", None)
    probability = post == ["sigmoid"] or (rng is not None and tuple(rng) == (0.0, 1.0))
    w = descr.weights
    if w.pytorch_state_dict is not None:
        from bioimageio.core.backends.pytorch_backend import load_torch_model

        net = load_torch_model(w.pytorch_state_dict, load_state=True, devices=["cpu"])
    elif w.torchscript is not None:
        from bioimageio.spec.utils import download

        net = torch.jit.load(str(download(w.torchscript.source).path), map_location="cpu")
    else:
        _fail(source, "no pytorch_state_dict or torchscript weights")
    if post == ["sigmoid"]:
        net = nn.Sequential(net, nn.Sigmoid())
    cfg = (descr.config.model_dump() if hasattr(descr.config, "model_dump") else dict(descr.config or {}))
    ours = cfg.get("neuroedge") or {}
    meta = {"norm": package_norm(descr, source), "threshold": float(ours.get("threshold", 0.5)),
            "name": str(descr.name)}
    return PackageModel(net, min_size, step, probability).eval(), meta
